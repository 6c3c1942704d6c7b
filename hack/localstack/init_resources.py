"""Create the qwp dev resources in LocalStack (idempotent).

Run by `hack/localstack/localstack.sh init` with the LocalStack venv's python.
Buckets: $S3_IN_BUCKET, $S3_OUT_BUCKET; the output bucket gets a lifecycle rule that
expires the API server's idempotency records (prefix _idempotency/) a day after the
server stops honouring them ($IDEMPOTENCY_TTL_HOURS, default 24).
Queues: $SQS_REQ_QUEUE_NAME-dlq and $SQS_REQ_QUEUE_NAME, the latter with a
VisibilityTimeout and a RedrivePolicy to the DLQ. Attributes are (re)applied to
existing queues as well, so changed settings take effect.
"""

import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value else default


def main() -> int:
    endpoint = env("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    region = env("AWS_REGION", env("AWS_DEFAULT_REGION", "us-east-1"))
    session = boto3.session.Session(
        aws_access_key_id=env("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=env("AWS_SECRET_ACCESS_KEY", "test"),
        region_name=region,
    )
    cfg = Config(retries={"max_attempts": 5, "mode": "standard"})
    s3 = session.client("s3", endpoint_url=endpoint, config=cfg)
    sqs = session.client("sqs", endpoint_url=endpoint, config=cfg)

    for bucket in (env("S3_IN_BUCKET", "input-bucket"), env("S3_OUT_BUCKET", "output-bucket")):
        try:
            s3.head_bucket(Bucket=bucket)
            print(f"bucket exists:  s3://{bucket}")
            continue
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        kwargs = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**kwargs)
            print(f"bucket created: s3://{bucket}")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
            print(f"bucket exists:  s3://{bucket}")

    # The server ignores idempotency records older than IDEMPOTENCY_TTL_HOURS; the rule
    # only reclaims their storage (S3 counts lifecycle ages in whole days).
    ttl_hours = int(env("IDEMPOTENCY_TTL_HOURS", "24"))
    expire_days = -(-ttl_hours // 24) + 1
    out_bucket = env("S3_OUT_BUCKET", "output-bucket")
    s3.put_bucket_lifecycle_configuration(
        Bucket=out_bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "qwp-idempotency-records",
                    "Filter": {"Prefix": "_idempotency/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": expire_days},
                }
            ]
        },
    )
    print(f"lifecycle:      s3://{out_bucket}/_idempotency/ expires after {expire_days} days")

    queue = env("SQS_REQ_QUEUE_NAME", "request-queue")
    visibility = int(env("SQS_VISIBILITY_TIMEOUT_SECONDS", "60"))
    max_receive = int(env("SQS_MAX_RECEIVE_COUNT", "5"))

    def ensure_queue(name: str, attrs: dict) -> str:
        # create_queue is idempotent only when attributes match, so create bare
        # and then set the attributes we want (applies to existing queues too).
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        if attrs:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        return url

    dlq_url = ensure_queue(f"{queue}-dlq", {})
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive}
    req_url = ensure_queue(
        queue,
        {
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(redrive),
        },
    )

    attrs = sqs.get_queue_attributes(
        QueueUrl=req_url, AttributeNames=["VisibilityTimeout", "RedrivePolicy"]
    )["Attributes"]
    got = json.loads(attrs.get("RedrivePolicy", "{}"))
    if (
        attrs.get("VisibilityTimeout") != str(visibility)
        or got.get("deadLetterTargetArn") != dlq_arn
        or int(got.get("maxReceiveCount", -1)) != max_receive
    ):
        print(f"queue attributes not applied as expected: {attrs}", file=sys.stderr)
        return 1

    print(f"SQS_DLQ_URL={dlq_url}")
    print(f"SQS_REQ_QUEUE_URL={req_url}")
    print(
        f"request queue: VisibilityTimeout={visibility}s, "
        f"RedrivePolicy maxReceiveCount={max_receive} -> {dlq_arn}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
