"""What the rehearsal needs from "AWS" that a real account already has, done openly against the
local emulator (moto): the hosted zone and model buckets exist, and S3 replication copies objects
(moto stores replication rules but copies nothing). Also records the golden requests from the
release that is known good. Usage: aws_setup.py setup | replicate KEY | golden URL OUT"""

import json
import sys
import urllib.request

import boto3

BUCKETS = {"us-east-1": "acme-models-use1", "eu-west-1": "acme-models-euw1", "ap-southeast-1": "acme-models-apse1"}
PRIMARY = ("us-east-1", "acme-models-use1")


def s3(region):
    return boto3.client("s3", region_name=region)


def setup():
    boto3.client("route53", region_name="us-east-1").create_hosted_zone(Name="acme.internal.", CallerReference="rehearsal")
    for region, bucket in BUCKETS.items():
        kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3(region).create_bucket(Bucket=bucket, **kwargs)


def replicate(key):
    """Copies the primary's object, metadata included, into every regional bucket."""
    src = s3(PRIMARY[0]).get_object(Bucket=PRIMARY[1], Key=key)
    body, meta = src["Body"].read(), src.get("Metadata", {})
    for region, bucket in BUCKETS.items():
        if bucket != PRIMARY[1]:
            s3(region).put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta)
            print(f"  emulated replication: s3://{PRIMARY[1]}/{key} -> s3://{bucket}/{key}")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)


def golden(base, out):
    """Asks the known-good release, and writes what it answered as the expected answers."""
    requests = [
        ("summary", "/v1/completions", {"prompt": "Quarterly report: revenue grew", "max_tokens": 12, "temperature": 0}),
        ("chat", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Summarise: disk alerts on db-1"}], "max_tokens": 10, "temperature": 0}),
        ("anomaly", "/v1/classify", {"input": "disk usage at 99% on db-1, writes failing", "labels": ["normal", "anomaly"]}),
    ]
    with open(out, "w") as f:
        for name, endpoint, body in requests:
            answer = post(base + endpoint, body)
            if endpoint == "/v1/completions":
                expect = answer["choices"][0]["text"]
            elif endpoint == "/v1/chat/completions":
                expect = answer["choices"][0]["message"]["content"]
            else:
                expect = answer["label"]
            f.write(json.dumps({"name": name, "endpoint": endpoint, "body": body, "expect": expect, "budget_ms": 10000}) + "\n")
    print(f"  recorded {len(requests)} golden requests from {base}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "setup":
        setup()
    elif cmd == "replicate":
        replicate(sys.argv[2])
    elif cmd == "golden":
        golden(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
