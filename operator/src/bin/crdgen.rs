//! Prints the QueueWorkerPool CRD; `make crds` writes it to crds/queueworkerpool.yaml.

fn main() {
    print!("{}", qwp_operator::crd::crd_yaml());
}
