"""Object storage: URIs, S3-compatible endpoints, the embedded endpoint, and clear errors.

tinyray reaches every store the same way: a URI (``s3://bucket/prefix`` or a local folder) plus
an endpoint URL (``AWS_ENDPOINT_URL`` or a flag) and AWS's standard credential chain: keys in the
environment (with ``AWS_SESSION_TOKEN`` for STS, SSO and assumed roles), ``AWS_PROFILE``, the
instance profile, IRSA on EKS. With no region set, a bucket's region is asked of the store
(``bucket_region``): never a silent us-east-1, which pyarrow cannot recover from outside that
region (apache/arrow#14601). AWS S3, MinIO, Ceph, R2 and the embedded endpoint (``EmbeddedS3``,
for laptops and tests) take the same code path; nothing here special-cases the embedded one.
"""
from __future__ import annotations

import hashlib
import os
import socket
import functools
from dataclasses import dataclass, field, replace
from urllib.parse import urlparse

from tinyray.errors import TinyrayError

# The standard variables of a store's settings, in StorageOptions' field order.
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN")
# Those that may travel to other processes (Ray's runtime env): never a credential. Ray logs a
# runtime env in full (runtime_env_agent.log) and serves it on the dashboard and the state API.
PUBLIC_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_REGION")
# The embedded store's keys: fixed, public, local-only (it takes only requests signed with them,
# and no browser can send one: private_s3). A worker that sees the marker in its environment uses
# them; they are the only keys that may travel.
EMBEDDED_KEYS = ("tinyray-local", "tinyray-local-secret")
EMBEDDED_MARKER = "TINYRAY_EMBEDDED_S3"
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class StorageOptions:
    """Where the S3-compatible store is and how to sign in. ``repr`` never shows secrets."""

    endpoint_url: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    # None: not set anywhere; each bucket's own region is asked of the store (bucket_region)
    region: str | None = None
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, env=None) -> "StorageOptions":
        """Settings from the AWS variables; an explicit ``endpoint_url`` (a flag) wins."""
        env = os.environ if env is None else env
        keys = (env.get("AWS_ACCESS_KEY_ID") or None, env.get("AWS_SECRET_ACCESS_KEY") or None)
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
        if env.get(EMBEDDED_MARKER) == "1":
            # the store is the embedded one (the marker travels only with its endpoint): its keys,
            # never the node's own, which are for real AWS and would be refused there anyway
            keys, token = EMBEDDED_KEYS, None
        opts = cls(
            endpoint_url=endpoint_url or env.get("AWS_ENDPOINT_URL") or None,
            access_key=keys[0],
            secret_key=keys[1],
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _profile_region(env),
            session_token=token if all(keys) else None,
        )
        if opts.endpoint_url:
            parsed = urlparse(opts.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise TinyrayError(
                    f"endpoint URL {opts.endpoint_url!r} must look like http://host:port or https://host"
                )
        return opts

    def to_env(self) -> dict[str, str]:
        """All the variables of these settings, credentials included: for a process you start
        yourself (a shell's export, a subprocess's env), never for Ray's runtime env."""
        values = (self.endpoint_url, self.access_key, self.secret_key, self.region, self.session_token)
        return {k: v for k, v in zip(_ENV_KEYS, values) if v}

    def public_env(self) -> dict[str, str]:
        """What may travel to Ray's workers: where the store is, not how to sign in. Each worker
        signs in with what its own node has (its environment, an instance profile, IRSA), or,
        for the embedded store, with its public keys, named by a marker."""
        env = {k: v for k, v in self.to_env().items() if k in PUBLIC_ENV_KEYS}
        return {**env, EMBEDDED_MARKER: "1"} if self.embedded else env

    def for_bucket(self, uri: str) -> "StorageOptions":
        """These settings with the region of ``uri``'s bucket filled in when none was set."""
        if self.region or not is_s3(uri):
            return self
        return replace(self, region=bucket_region(split_s3(uri)[0], self))

    @property
    def embedded(self) -> bool:
        """Signs in with the embedded store's keys: public, local-only values (the store takes
        only requests signed with them)."""
        return (self.access_key, self.secret_key) == EMBEDDED_KEYS

    def describe(self) -> str:
        """The endpoint for messages and reports: never the credentials."""
        return self.endpoint_url or "AWS S3 (default endpoint)"


# --------------------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → (``bucket``, ``a/b``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise TinyrayError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


def local_path(uri: str) -> str:
    """A local folder argument as an absolute path: ``~`` expanded, ``file://`` dropped."""
    if "://" in uri and not uri.startswith("file://"):
        raise TinyrayError(f"{uri!r}: storage must be s3://bucket/prefix or a local folder")
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto an s3:// URI or a local path (made absolute) with '/'."""
    out = (uri if is_s3(uri) else local_path(uri)).rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def filesystem(uri: str, opts: StorageOptions, ship: bool = False):
    """A pyarrow filesystem and the path inside it for ``uri`` (``s3://…`` or a local path).

    ``ship=True`` for a filesystem handed to Ray (Ray Data reads, Train and Tune storage): it is
    pickled into task arguments and Tune's tuner.pkl, so it carries no keys but the embedded
    store's; each process finds its own credentials (environment, instance profile, IRSA)."""
    import pyarrow.fs as pafs

    if not is_s3(uri):
        return pafs.LocalFileSystem(), local_path(uri)
    bucket, key = split_s3(uri)
    kwargs = {"region": opts.for_bucket(uri).region}
    if opts.endpoint_url:
        parsed = urlparse(opts.endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if opts.access_key and opts.secret_key and (opts.embedded or not ship):
        kwargs.update(access_key=opts.access_key, secret_key=opts.secret_key)
        if opts.session_token:
            kwargs["session_token"] = opts.session_token
    # Bounded retries: an endpoint that has gone away fails in seconds, not minutes.
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=4)
    kwargs["connect_timeout"] = 5
    kwargs["request_timeout"] = 60
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")


def s3_client(opts: StorageOptions, attempts: int = 3, bucket: str | None = None):
    """A boto3 client for the store: explicit keys (with their session token) when set, else
    boto3's own chain (profile, SSO, instance profile, IRSA). ``bucket`` picks that bucket's
    region when none is set."""
    import boto3
    from botocore.config import Config

    region = opts.region or (bucket_region(bucket, opts) if bucket else DEFAULT_REGION)
    return boto3.client(
        "s3",
        endpoint_url=opts.endpoint_url,
        aws_access_key_id=opts.access_key,
        aws_secret_access_key=opts.secret_key,
        aws_session_token=opts.session_token,
        region_name=region,
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": attempts, "mode": "standard"}),
    )


def _profile_region(env) -> str | None:
    """The region of the AWS profile in use (~/.aws/config), if it names one."""
    if env is not os.environ and not env.get("AWS_PROFILE"):
        return None
    try:
        import botocore.session

        session = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
        return session.get_config_variable("region") or None
    except Exception:  # noqa: BLE001 - a broken profile is boto3's to report when it signs in
        return None


@functools.lru_cache(maxsize=64)
def _bucket_region(endpoint_url, access_key, secret_key, session_token, bucket: str) -> str:
    from botocore.exceptions import ClientError

    opts = StorageOptions(endpoint_url, access_key, secret_key, DEFAULT_REGION, session_token)
    client = s3_client(opts, attempts=2)
    try:
        headers = client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"]
    except ClientError as e:
        # S3 names the bucket's region even when it refuses the request from another region
        headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if "x-amz-bucket-region" not in headers:
            raise explain_s3_error(e, f"s3://{bucket}", opts) from None
    except Exception as e:  # noqa: BLE001 - unreachable store, no credentials: one line
        raise explain_s3_error(e, f"s3://{bucket}", opts) from None
    region = headers.get("x-amz-bucket-region")
    if not region:  # a store that does not send the header: ask for the location
        try:
            region = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
        except Exception as e:  # noqa: BLE001
            raise explain_s3_error(e, f"s3://{bucket}", opts) from None
    return region or DEFAULT_REGION  # S3's own answer for us-east-1 is an empty location


def bucket_region(bucket: str, opts: StorageOptions) -> str:
    """The region ``bucket`` lives in, as the store says (once per bucket and endpoint)."""
    return _bucket_region(opts.endpoint_url, opts.access_key, opts.secret_key, opts.session_token, bucket)


def explain_s3_error(e: BaseException, uri: str, opts: StorageOptions) -> TinyrayError:
    """Turn a boto3/pyarrow failure into one line that says what the user can do about it."""
    from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError,
                                     ConnectTimeoutError)

    where = opts.describe()
    if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
        return TinyrayError(f"cannot reach the object store at {where}; check --endpoint-url / AWS_ENDPOINT_URL")
    if isinstance(e, NoCredentialsError):
        return TinyrayError(f"no AWS credentials for {where}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN for temporary keys), or run where "
                            f"an instance profile or IRSA role applies")
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        bucket = split_s3(uri)[0] if is_s3(uri) else uri
        if code in ("NoSuchBucket", "404"):
            return TinyrayError(f"bucket {bucket!r} does not exist at {where}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                    "InvalidToken", "ExpiredToken"):
            return TinyrayError(f"the object store at {where} refused the credentials for {uri} ({code})")
        return TinyrayError(f"object store error at {where} for {uri}: {code}")
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "NETWORK_CONNECTION" in text or "Couldn't connect" in text or "curlCode: 7" in text:
        return TinyrayError(f"cannot reach the object store at {where}; check --endpoint-url / AWS_ENDPOINT_URL")
    if "NoSuchBucket" in text or "does not exist" in text and "bucket" in text.lower():
        return TinyrayError(f"bucket for {uri} does not exist at {where}")
    if "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return TinyrayError(f"the object store at {where} refused the credentials for {uri}")
    return TinyrayError(f"storage error for {uri} at {where}: {text}")


def check_writable(uri: str, opts: StorageOptions) -> None:
    """Fail early, with one clear line, when an s3:// destination cannot be used."""
    if not is_s3(uri):
        return
    bucket, _ = split_s3(uri)
    try:
        s3_client(opts, attempts=2, bucket=bucket).head_bucket(Bucket=bucket)
    except Exception as e:  # noqa: BLE001 - every failure becomes one explained line
        raise explain_s3_error(e, uri, opts) from None


def read_bytes(uri: str, opts: StorageOptions) -> bytes:
    fs, path = filesystem(uri, opts)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        if "Path does not exist" in str(e) or "NoSuchKey" in str(e) or "not found" in str(e).lower():
            raise FileNotFoundError(uri) from None
        raise explain_s3_error(e, uri, opts) from None


def exists(uri: str, opts: StorageOptions) -> bool:
    """Whether a file is at ``uri`` (asked, never read)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, opts)
    try:
        return fs.get_file_info(path).type == pafs.FileType.File
    except OSError as e:
        raise explain_s3_error(e, uri, opts) from None


def write_bytes(uri: str, data: bytes, opts: StorageOptions) -> None:
    """Write ``data`` whole or not at all: an S3 PUT is atomic; a local file is written beside
    its place under a name of this process and renamed over it."""
    fs, path = filesystem(uri, opts)
    try:
        if is_s3(uri):
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise explain_s3_error(e, uri, opts) from None


def upload_file(path: str, uri: str, opts: StorageOptions) -> None:
    """A local file to s3://…, streamed from disk (boto3's multipart upload for a large one, so
    the file is never whole in memory); the object appears only when the upload completes."""
    bucket, key = split_s3(uri)
    try:
        s3_client(opts, bucket=bucket).upload_file(path, bucket, key)
    except Exception as e:  # noqa: BLE001 - botocore's errors, and boto3's S3UploadFailedError around them
        raise explain_s3_error(getattr(e, "__context__", None) if type(e).__name__ == "S3UploadFailedError"
                               and e.__context__ is not None else e, uri, opts) from None


def upload_dir(local: str, uri: str, opts: StorageOptions) -> None:
    """Copy a local folder's files under ``uri`` (a local folder or s3://), keeping their paths."""
    import shutil

    for dirpath, _, files in os.walk(local):
        for name in files:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local)
            if is_s3(uri):
                with open(src, "rb") as f:
                    write_bytes(join(uri, rel), f.read(), opts)
            else:
                dst = os.path.join(local_path(uri), rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)


def list_files(uri: str, opts: StorageOptions) -> list[str]:
    """The files under ``uri`` (a local folder or s3:// prefix), as paths relative to it."""
    if not is_s3(uri):
        root = local_path(uri)
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    try:
        pages = s3_client(opts, bucket=bucket).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))
    except Exception as e:  # noqa: BLE001 - one explained line
        raise explain_s3_error(e, uri, opts) from None


def publish_dir(local: str, uri: str, opts: StorageOptions, marker: str, force: bool = False) -> None:
    """Put the local folder's files at ``uri`` whole or not at all, ``marker`` (the file that
    says the folder is complete) last. A ``uri`` that holds files is refused unless ``force``,
    which replaces it whole: nothing of the old folder stays.

    A local folder is built beside its place and renamed into it. An S3 prefix has no rename:
    the files go to a temporary prefix first (so a failed upload leaves ``uri`` as it was), then
    the old folder loses its marker before anything else of it changes, the new files are copied
    in server-side with the marker last, and the temporary prefix goes."""
    import shutil
    import uuid

    existing = list_files(uri, opts)
    if existing and not force:
        raise TinyrayError(f"{uri} is not empty ({len(existing)} file(s)): pass --force to replace it whole")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not is_s3(uri):
        dst = local_path(uri).rstrip("/")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp, old = f"{dst}.tmp-{tag}", f"{dst}.old-{tag}"
        try:
            shutil.copytree(local, tmp)
            if os.path.exists(dst):
                os.replace(dst, old)
            os.replace(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return
    bucket, key = split_s3(uri)
    key = key.rstrip("/")
    staging = f"{key}.tmp-{tag}"
    files = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs)
    client = s3_client(opts, bucket=bucket)
    try:
        try:
            for rel in files:
                _put_file(client, bucket, f"{staging}/{rel}", os.path.join(local, rel))
            for rel in sorted(existing, key=lambda r: r != marker):  # the old marker first
                client.delete_object(Bucket=bucket, Key=f"{key}/{rel}")
            for rel in sorted(files, key=lambda r: r == marker):  # the new marker last
                client.copy_object(Bucket=bucket, Key=f"{key}/{rel}",
                                   CopySource={"Bucket": bucket, "Key": f"{staging}/{rel}"})
        finally:
            for rel in files:
                client.delete_object(Bucket=bucket, Key=f"{staging}/{rel}")
    except TinyrayError:
        raise
    except Exception as e:  # noqa: BLE001 - one explained line
        raise explain_s3_error(e, uri, opts) from None


def _put_file(client, bucket: str, key: str, path: str) -> None:
    with open(path, "rb") as f:
        client.put_object(Bucket=bucket, Key=key, Body=f.read())


def fetch_to_cache(uri: str, opts: StorageOptions | None = None) -> str:
    """An ``s3://`` object as a local file in ~/.cache/tinyray (Keras loads weights from a local
    file only), fetched again whenever the object's size or ETag differ from the cached copy's.

    Several processes on a node (one per GPU) may fetch at once: each writes its own temporary
    file, checks its size, and renames it into place; the last rename wins with identical bytes.
    The object is read with ``IfMatch`` on the ETag it was sized by, so a file replaced mid-read
    is refused rather than mixed."""
    import uuid

    opts = opts or StorageOptions.from_env()
    bucket, key = split_s3(uri)
    client = s3_client(opts, bucket=bucket)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as e:  # noqa: BLE001 - a missing object or no access: one line
        if "404" in str(e) or "Not Found" in str(e):
            raise TinyrayError(f"{uri} does not exist at {opts.describe()}") from None
        raise explain_s3_error(e, uri, opts) from None
    size, etag = int(head["ContentLength"]), head.get("ETag", "").strip('"')
    digest = hashlib.sha256(f"{opts.endpoint_url}|{uri}".encode()).hexdigest()[:16]
    cache = os.path.join(os.path.expanduser("~/.cache/tinyray"), digest)
    local = os.path.join(cache, os.path.basename(uri.rstrip("/")) or "object")
    stamp = f"{size} {etag}"
    if os.path.exists(local) and os.path.getsize(local) == size and _read_text(local + ".etag") == stamp:
        return local
    os.makedirs(cache, exist_ok=True)
    tmp = f"{local}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"]
        got = 0
        with open(tmp, "wb") as f:
            while chunk := body.read(1 << 20):
                got += len(chunk)
                f.write(chunk)
        if got != size:
            raise TinyrayError(f"{uri}: read {got:,} of its {size:,} bytes; not used (try again)")
        os.replace(tmp, local)
        with open(tmp, "w") as f:  # the stamp, renamed into place the same way
            f.write(stamp)
        os.replace(tmp, local + ".etag")
    except TinyrayError:
        raise
    except Exception as e:  # noqa: BLE001 - a changed object (IfMatch) or a dropped read: one line
        if "PreconditionFailed" in str(e) or "412" in str(e):
            raise TinyrayError(f"{uri} changed while it was read; not used (try again)") from None
        raise explain_s3_error(e, uri, opts) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


# ----------------------------------------------------------------------- the embedded endpoint


class EmbeddedS3:
    """A local S3-compatible endpoint (moto's server speaking the S3 REST API over real HTTP on
    127.0.0.1), for a laptop and for tests. Use as a context manager::

        with EmbeddedS3(bucket="tinyray") as s3:
            opts = s3.options          # endpoint URL + credentials
            os.environ.update(s3.env)  # or export them for other processes

    Its keys are fixed, local-only values, and it serves only requests signed with them, with no
    CORS (``private_s3``): no web page the user opens can reach it.
    """

    ACCESS_KEY, SECRET_KEY = EMBEDDED_KEYS

    def __init__(self, port: int = 0, bucket: str | None = "tinyray"):
        self.port = port
        self.bucket = bucket
        self._server = None

    def start(self) -> "EmbeddedS3":
        """Bind 127.0.0.1:port (0: any free one) and serve in a thread. A port that cannot be
        bound is one line at once (moto's own threaded server waits for ever on that)."""
        import logging
        import threading

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from tinyray.data.private_s3 import PrivateEndpoint

        # werkzeug logs every request to stderr; the store's users want their own output.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.app = PrivateEndpoint(DomainDispatcherApplication(create_backend_app), self.ACCESS_KEY, self.SECRET_KEY)
        try:
            if self.port:  # werkzeug prints its own lines and exits on a port in use: ask first
                with socket.socket() as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", self.port))
            self._server = make_server("127.0.0.1", self.port, self.app, threaded=True,
                                       request_handler=MotoRequestHandler)
        except (OSError, SystemExit) as e:  # werkzeug exits on a port in use
            raise TinyrayError(f"the embedded S3 endpoint cannot listen on 127.0.0.1:{self.port} "
                               f"({e if isinstance(e, OSError) else 'address already in use'}): "
                               f"pick another --port") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-s3", daemon=True)
        self._thread.start()
        if self.bucket:
            s3_client(self.options).create_bucket(Bucket=self.bucket)  # in us-east-1, the options' region
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> StorageOptions:
        return StorageOptions(self.endpoint_url, self.ACCESS_KEY, self.SECRET_KEY, DEFAULT_REGION)

    @property
    def env(self) -> dict[str, str]:
        """Endpoint and (local-only) credentials, for a process you start yourself."""
        return self.options.to_env()

    @property
    def public_env(self) -> dict[str, str]:
        """Endpoint only: what may travel in a Ray runtime env."""
        return self.options.public_env()

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
