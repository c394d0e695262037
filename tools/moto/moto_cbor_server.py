#!/usr/bin/env python3
"""moto_server plus the Smithy RPCv2-CBOR protocol, for aws-sdk-cloudwatch >= 1.100.

A drop-in replacement for `moto_server -H HOST -p PORT`: same flags, same
`/moto-api/` and `/moto-api/reset`, one endpoint for every service and region.

Why it exists: the current Rust CloudWatch SDK speaks only RPCv2-CBOR
(`POST /service/<target prefix>/operation/<Op>`, `application/cbor`), which
moto does not implement. The product stays on the current SDK; this wrapper
translates at the edge instead. Each CBOR request is decoded, re-encoded with
botocore's JSON serializer for that operation, handed to moto in-process (with
the original Authorization header, so moto still picks the region from the
signature), and moto's JSON answer is parsed with botocore's model-aware parser
and sent back as CBOR.

It also corrects one moto 5.2 S3 serialization bug: responses of some operations
(ListParts, GetBucketVersioning, ...) come wrapped in `<{Operation}Response>`
instead of the element S3 sends (`<ListPartsResult>`, `<VersioningConfiguration>`).
botocore ignores the root name; the Rust SDK rejects the response. The root
element is renamed (see S3_RESULT_ROOTS); nothing else in the body is touched.
Every other request goes to moto untouched.
"""

import argparse
import datetime
import gzip
import io
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import zlib

try:
    import botocore.session
    import cbor2
    from botocore import parsers, serialize
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        create_backend_app,
    )
    from werkzeug.serving import run_simple
except ImportError as missing:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"moto_cbor_server: {missing}. Install the test dependencies with "
        "`pip install -r tools/moto/requirements.txt`.\n"
    )
    sys.exit(3)

# Older moto 5.2 releases answer some S3 calls with XML roots the Rust SDK rejects.
MINIMUM_MOTO = (5, 2, 5)


def check_moto_version():
    import moto

    release = tuple(int(part) for part in moto.__version__.split(".")[:3] if part.isdigit())
    if release < MINIMUM_MOTO:
        wanted = ".".join(map(str, MINIMUM_MOTO))
        sys.stderr.write(
            f"moto_cbor_server: moto {moto.__version__} is too old (need {wanted} or newer). "
            "Install the test dependencies with `pip install -r tools/moto/requirements.txt`.\n"
        )
        sys.exit(3)


# Smithy target prefix (the path segment after /service/) -> botocore service name.
# Add a service here if its SDK moves to RPCv2-CBOR as well.
SERVICE_FOR_TARGET_PREFIX = {"GraniteServiceVersion20100801": "cloudwatch"}

# The root element real S3 sends, per operation (S3 API reference), for the operations
# moto 5.2 wraps in `<{Operation}Response>` instead.
S3_RESULT_ROOTS = {
    "ListParts": "ListPartsResult",
    "GetBucketVersioning": "VersioningConfiguration",
    "CompleteMultipartUpload": "CompleteMultipartUploadResult",
    "CreateMultipartUpload": "InitiateMultipartUploadResult",
    "ListMultipartUploads": "ListMultipartUploadsResult",
    "ListObjects": "ListBucketResult",
    "ListObjectsV2": "ListBucketResult",
    "ListObjectVersions": "ListVersionsResult",
    "ListBuckets": "ListAllMyBucketsResult",
    "DeleteObjects": "DeleteResult",
    "CopyObject": "CopyObjectResult",
    "UploadPartCopy": "CopyPartResult",
    "GetObjectTagging": "Tagging",
    "GetBucketTagging": "Tagging",
    "GetBucketAcl": "AccessControlPolicy",
    "GetObjectAcl": "AccessControlPolicy",
    "GetBucketEncryption": "ServerSideEncryptionConfiguration",
    "GetBucketLifecycleConfiguration": "LifecycleConfiguration",
    "GetBucketCors": "CORSConfiguration",
    "GetBucketLogging": "BucketLoggingStatus",
    "GetPublicAccessBlock": "PublicAccessBlockConfiguration",
    "GetBucketAccelerateConfiguration": "AccelerateConfiguration",
    "GetBucketNotificationConfiguration": "NotificationConfiguration",
    "GetBucketOwnershipControls": "OwnershipControls",
    "GetObjectLockConfiguration": "ObjectLockConfiguration",
    "GetObjectLegalHold": "LegalHold",
    "GetBucketPolicyStatus": "PolicyStatus",
}
# Only small XML documents are inspected; object bodies stream through untouched.
MAX_FIXED_BODY = 1 << 20
MISNAMED_ROOT = re.compile(rb"<(\w+)Response([\s>/])")

CBOR_CONTENT_TYPE = "application/cbor"
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

_session = botocore.session.get_session()
_models = {}


def service_model(service_name):
    if service_name not in _models:
        _models[service_name] = _session.get_service_model(service_name)
    return _models[service_name]


def parse_cbor_path(path):
    """Return (service_name, operation) for a CBOR RPC path we translate, else None."""
    parts = path.strip("/").split("/")
    if len(parts) != 4 or parts[0] != "service" or parts[2] != "operation":
        return None
    service_name = SERVICE_FOR_TARGET_PREFIX.get(parts[1])
    if service_name is None:
        return None
    return service_name, parts[3]


def signing_service(environ):
    """The service named in the SigV4 credential scope, e.g. `s3`."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", auth)
    return match.group(1) if match else None


def rename_s3_root(body):
    """`<ListPartsResponse ...>...</ListPartsResponse>` -> `<ListPartsResult ...>...</ListPartsResult>`."""
    match = MISNAMED_ROOT.search(body[:512])
    if match is None:
        return body
    operation = match.group(1).decode("ascii")
    root = S3_RESULT_ROOTS.get(operation)
    if root is None:
        return body
    wrong_close = f"</{operation}Response>".encode()
    start, end = match.span()
    body = body[:start] + f"<{root}".encode() + match.group(2) + body[end:]
    closing = body.rfind(wrong_close)
    if closing != -1:
        body = body[:closing] + f"</{root}>".encode() + body[closing + len(wrong_close):]
    return body


def decompress(body, encoding):
    encoding = (encoding or "").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def coerce_to_shape(value, shape):
    """Give each value the CBOR type its model shape asks for.

    JSON cannot tell 3 from 3.0, and the Smithy CBOR decoders are strict about
    integer versus float, so doubles are sent as floats and integers as ints.
    """
    if value is None or shape is None:
        return value
    type_name = shape.type_name
    if type_name == "structure":
        return {
            key: coerce_to_shape(item, shape.members.get(key))
            for key, item in value.items()
        }
    if type_name == "list":
        return [coerce_to_shape(item, shape.member) for item in value]
    if type_name == "map":
        return {key: coerce_to_shape(item, shape.value) for key, item in value.items()}
    if type_name in ("double", "float"):
        return float(value)
    if type_name in ("integer", "long", "short", "byte"):
        return int(value)
    if type_name == "timestamp" and isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value
    return value


def cbor_response(start_response, status, payload):
    body = cbor2.dumps(payload, datetime_as_timestamp=True)
    start_response(
        status,
        [
            ("Content-Type", CBOR_CONTENT_TYPE),
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]


def cbor_error(start_response, status, code, message):
    return cbor_response(start_response, status, {"__type": code, "message": message})


class CborTranslatingApp:
    """WSGI middleware: RPCv2-CBOR in front of moto's JSON protocol."""

    def __init__(self, moto_app):
        self.moto_app = moto_app

    def __call__(self, environ, start_response):
        route = parse_cbor_path(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            if signing_service(environ) == "s3":
                return self.fix_s3_root(environ, start_response)
            return self.moto_app(environ, start_response)
        try:
            return self.translate(environ, start_response, *route)
        except Exception as error:  # moto bugs become a readable service error
            traceback.print_exc()
            return cbor_error(
                start_response,
                "500 Internal Server Error",
                "InternalFailure",
                f"moto_cbor_server: {type(error).__name__}: {error}",
            )

    def fix_s3_root(self, environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return lambda _chunk: None

        chunks = self.moto_app(environ, capture)
        headers = captured.get("headers", [])
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        length = next((v for k, v in headers if k.lower() == "content-length"), None)
        small = length is not None and length.isdigit() and int(length) <= MAX_FIXED_BODY
        if "xml" not in content_type or not small:
            start_response(captured.get("status", "500 Internal Server Error"), headers)
            return chunks
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        body = rename_s3_root(body)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]

    def translate(self, environ, start_response, service_name, operation_name):
        model = service_model(service_name)
        try:
            operation = model.operation_model(operation_name)
        except Exception:
            return cbor_error(
                start_response,
                "400 Bad Request",
                "UnknownOperationException",
                f"{service_name} has no operation {operation_name}",
            )

        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        raw = decompress(raw, environ.get("HTTP_CONTENT_ENCODING"))
        params = cbor2.loads(raw) if raw else {}

        json_request = serialize.create_serializer("json").serialize_to_request(
            params, operation
        )
        json_body = json_request["body"]
        if isinstance(json_body, str):
            json_body = json_body.encode("utf-8")

        inner = dict(environ)
        inner.pop("HTTP_CONTENT_ENCODING", None)
        inner.pop("HTTP_SMITHY_PROTOCOL", None)
        inner["PATH_INFO"] = "/"
        inner["RAW_URI"] = "/"
        inner["REQUEST_URI"] = "/"
        inner["CONTENT_TYPE"] = JSON_CONTENT_TYPE
        inner["HTTP_CONTENT_TYPE"] = JSON_CONTENT_TYPE
        inner["CONTENT_LENGTH"] = str(len(json_body))
        inner["HTTP_X_AMZ_TARGET"] = json_request["headers"]["X-Amz-Target"]
        inner["wsgi.input"] = io.BytesIO(json_body)

        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return lambda _chunk: None

        chunks = self.moto_app(inner, capture)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()

        status = captured.get("status", "500 Internal Server Error")
        status_code = int(status.split()[0])
        if not body.lstrip().startswith(b"{"):
            # moto answered with HTML (an exception page or a 404): not a protocol reply.
            return cbor_error(
                start_response,
                status if status_code >= 400 else "500 Internal Server Error",
                "InternalFailure",
                f"moto could not handle {service_name}.{operation_name} "
                f"(HTTP {status_code}): {body[:300].decode('utf-8', 'replace')}",
            )

        parsed = parsers.create_parser("json").parse(
            {
                "status_code": status_code,
                "headers": dict(captured.get("headers", [])),
                "body": body,
            },
            operation.output_shape,
        )
        if status_code >= 300 or "Error" in parsed and "Code" in parsed.get("Error", {}):
            error = parsed.get("Error", {})
            code = error.get("Code") or json.loads(body).get("__type", "InternalFailure")
            return cbor_error(
                start_response, status, code.split("#")[-1], error.get("Message", "")
            )

        parsed.pop("ResponseMetadata", None)
        return cbor_response(
            start_response, status, coerce_to_shape(parsed, operation.output_shape)
        )


def watch_parent(parent_pid):
    """Exit as soon as `parent_pid` ends, so a crashed test run leaves no server behind."""

    def watch():
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="moto_server with CloudWatch RPCv2-CBOR translation"
    )
    parser.add_argument("-H", "--host", default="127.0.0.1", help="host to bind")
    parser.add_argument(
        "-p",
        "--port",
        type=int,
        default=int(os.environ.get("MOTO_PORT", 5000)),
        help="port to listen on",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process is gone (test harnesses that may not get to kill us)",
    )
    args = parser.parse_args(argv)
    check_moto_version()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    if args.parent_pid:
        watch_parent(args.parent_pid)

    def stop(_signum, _frame):
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    moto_app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, CborTranslatingApp(moto_app), threaded=True)


if __name__ == "__main__":
    main()
