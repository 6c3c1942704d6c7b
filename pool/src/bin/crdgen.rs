//! Prints the QueueWorkerPool CRD; `make crds` writes it to crds/queueworkerpool.yaml.

fn main() {
    print!("{}", qwp_pool::crd::crd_yaml());
}
