"""compose.yaml's s3-init: create the lake's bucket on the S3 server once it answers (run in the
API image, which has boto3). The bucket and endpoint come from RECSYS_LAKE_URI and
AWS_ENDPOINT_URL, the keys from the mounted secrets (AWS_*_FILE)."""

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

bucket = urlparse(os.environ["RECSYS_LAKE_URI"]).netloc
client = boto3.client(
    "s3",
    endpoint_url=os.environ["AWS_ENDPOINT_URL"],
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id=Path(os.environ["AWS_ACCESS_KEY_ID_FILE"]).read_text().strip(),
    aws_secret_access_key=Path(os.environ["AWS_SECRET_ACCESS_KEY_FILE"]).read_text().strip(),
)
for _ in range(90):
    try:
        client.head_bucket(Bucket=bucket)
        print(f"bucket {bucket} exists")
        sys.exit(0)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            client.create_bucket(Bucket=bucket)
            print(f"bucket {bucket} created")
            sys.exit(0)
        print(f"waiting for the S3 server: {exc}")
    except EndpointConnectionError:
        print("waiting for the S3 server")
    time.sleep(2)
sys.exit(f"the S3 server at {os.environ['AWS_ENDPOINT_URL']} did not answer")
