"""Files from outside, as staging and predict meet them: bombs, other formats, corrupt and
oversized zip members, hostile downloads and a re-staging cut off half-way. Each is one line or
a listed skip, and nothing else is lost. Real files (Pillow-written JPEGs, zips written by
zipfile, a real HTTP server on loopback); no Ray."""
import hashlib
import http.server
import io
import json
import os
import struct
import threading
import time
import zipfile
import zlib

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tinyray.data import stage as stage_mod
from tinyray.data.images import MAX_PIXELS
from tinyray.data.stage import StageConfig, load_manifest, stage_dataset
from tinyray.errors import TinyrayError


def png_bomb(width: int, height: int) -> bytes:
    """A real grayscale PNG of width x height zero pixels: its rows deflate ~1000:1, so a 400 M
    pixel image is a few hundred KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def jpeg(size=(64, 64), seed=0) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
       b"/Helvetica findfont 12 scalefont setfont 10 10 moveto (hi) show\n%%EOF\n")


def first_images(release, n):
    wnid = open(os.path.join(release, "wnids.txt")).read().split()[0]
    folder = os.path.join(release, "train", wnid, "images")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]], f"train/{wnid}/images/"


def zip_release(release, path, compression=zipfile.ZIP_DEFLATED, extra=()):
    """The release folder as the official zip lays it out (tiny-imagenet-200/…), plus ``extra``
    (name, bytes) members."""
    with zipfile.ZipFile(path, "w", compression) as z:
        for d, _, files in sorted(os.walk(release)):
            for f in sorted(files):
                full = os.path.join(d, f)
                z.write(full, "tiny-imagenet-200/" + os.path.relpath(full, release))
        for name, data in extra:
            z.writestr("tiny-imagenet-200/" + name, data)
    return str(path)


def shard_rows(dest, manifest, split="train"):
    return [r for s in manifest[split]["shards"] for r in pq.read_table(os.path.join(dest, s["path"])).to_pylist()]


# ------------------------------------------------------------------------------------ images


def test_a_decompression_bomb_named_jpeg_is_skipped_unread_and_the_rest_is_staged(release_copy, tmp_path):
    bomb = png_bomb(20000, 20000)  # 400 M pixels: past Pillow's own bomb error, which used to escape
    assert len(bomb) < 1_000_000
    files, prefix = first_images(release_copy, 2)
    open(files[0], "wb").write(bomb)
    open(files[1], "wb").write(EPS)  # Pillow would hand this to Ghostscript
    manifest = stage_dataset(StageConfig(release_copy, str(tmp_path / "d"), progress=False))
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    name = prefix + os.path.basename(files[0])
    assert reasons[name] == f"400,000,000 pixels is over the {MAX_PIXELS:,}-pixel budget (not decoded)"
    assert reasons[prefix + os.path.basename(files[1])].startswith("not a JPEG or PNG file (starts b'%!PS-Ado")
    assert len(reasons) == 2 and manifest["train"]["count"] == 4 * 24 - 2


def test_predict_lists_a_bomb_or_a_foreign_format_as_an_error_row():
    from tinyray.data.pipeline import decode_image

    with pytest.raises(ValueError, match=r"^not a readable image: 400,000,000 pixels is over the"):
        decode_image(png_bomb(20000, 20000))
    with pytest.raises(ValueError, match=r"^not a readable image: 25,000,000 pixels is over the 16,777,216-pixel"):
        decode_image(png_bomb(5000, 5000))  # under Pillow's own limit, over tinyray's
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "GIF")
    with pytest.raises(ValueError, match=r"^not a readable image: not a JPEG or PNG file \(starts b'GIF8"):
        decode_image(buf.getvalue())
    assert decode_image(jpeg()).shape == (64, 64, 3)  # what the budget admits still reads


# ------------------------------------------------------------------------------------ zips


def test_a_corrupt_zip_member_is_skipped_and_listed_like_a_truncated_jpeg(sample_release, tmp_path):
    path = zip_release(sample_release, tmp_path / "r.zip", zipfile.ZIP_STORED)
    files, prefix = first_images(sample_release, 1)
    member = "tiny-imagenet-200/" + prefix + os.path.basename(files[0])
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(open(path, "rb").read())
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_at + 100] ^= 0xFF  # one byte of the stored JPEG: its CRC no longer matches
    open(path, "wb").write(bytes(raw))
    manifest = stage_dataset(StageConfig(path, str(tmp_path / "d"), progress=False))
    assert manifest["skipped"] == [{"file": prefix + os.path.basename(files[0]),
                                    "reason": "corrupt zip member (Bad CRC-32 for file '" + member + "')"}]
    assert manifest["train"]["count"] == 4 * 24 - 1


def test_zip_members_over_the_cap_are_never_inflated_and_max_bytes_raises_the_cap(sample_release, tmp_path):
    big = jpeg((512, 512))  # a real image, larger than the cap below
    folder = first_images(sample_release, 0)[1]
    path = zip_release(sample_release, tmp_path / "r.zip",
                       extra=[(folder + "big_0.JPEG", big),
                              # 100 MiB of zeros that deflate to ~100 KB: a zip bomb of one member
                              (folder + "zeros_0.JPEG", b"\0" * (100 * 2**20))])
    assert os.path.getsize(path) < 2_000_000
    manifest = stage_dataset(StageConfig(path, str(tmp_path / "d"), progress=False))
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {folder + "zeros_0.JPEG": f"{100 * 2**20:,} bytes is over the "
                       f"{64 * 2**20:,}-byte cap per file (--max-bytes raises it)"}
    assert manifest["train"]["count"] == 4 * 24 + 1  # the 512x512 image, re-encoded
    capped = stage_dataset(StageConfig(path, str(tmp_path / "d2"), progress=False, max_bytes=len(big) - 1))
    assert {s["file"] for s in capped["skipped"]} == {folder + "big_0.JPEG", folder + "zeros_0.JPEG"}


def test_a_release_text_file_over_the_cap_or_a_broken_zip_is_one_line(sample_release, tmp_path):
    path = zip_release(sample_release, tmp_path / "r.zip")
    with pytest.raises(TinyrayError, match=r"^wnids.txt in .*r.zip: \d[\d,]* bytes is over the 10-byte cap"):
        stage_dataset(StageConfig(path, str(tmp_path / "d"), progress=False, max_bytes=10))
    raw = open(path, "rb").read()
    end = raw.rindex(b"PK\x05\x06")
    open(tmp_path / "broken.zip", "wb").write(raw[:end - 40] + raw[end:])  # a central directory cut short
    with pytest.raises(TinyrayError) as e:
        stage_dataset(StageConfig(str(tmp_path / "broken.zip"), str(tmp_path / "d"), progress=False))
    assert "broken.zip" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ re-staging


def test_restaging_keeps_the_old_dataset_until_the_new_one_is_whole(sample_release, tmp_path, monkeypatch):
    dest = str(tmp_path / "d")
    first = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=10, progress=False))
    assert first["version"] == 1 and first["train"]["shards"][0]["path"] == "v1/train/part-00000.parquet"
    before = {s["path"]: open(os.path.join(dest, s["path"]), "rb").read()
              for split in ("train", "val") for s in first[split]["shards"]}
    from test_stage import interrupt_staging

    real = interrupt_staging(monkeypatch)  # half-way through train
    with pytest.raises(KeyboardInterrupt):
        stage_dataset(StageConfig(sample_release, dest, rows_per_shard=10, progress=False))
    assert os.path.exists(os.path.join(dest, "v2", "train", "part-00003.parquet"))  # it got that far
    assert load_manifest(dest) == first  # the old manifest, and every shard it names, as they were
    assert {p: open(os.path.join(dest, p), "rb").read() for p in before} == before
    assert len(shard_rows(dest, first)) == 4 * 24

    monkeypatch.setattr(stage_mod, "normalise_image", real)
    second = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=10, progress=False))
    assert second["version"] == 2 and load_manifest(dest) == second
    left = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs)
    assert left == sorted(["manifest.json", *(s["path"] for sp in ("train", "val") for s in second[sp]["shards"])])
    # the same release staged again: the same shard bytes, under the new version
    assert {p.replace("v1/", "v2/"): b for p, b in before.items()} == {
        p: open(os.path.join(dest, p), "rb").read() for p in left if p != "manifest.json"}


def test_keep_previous_keeps_the_replaced_shards_and_an_unversioned_dataset_is_replaced(sample_release, tmp_path):
    dest = str(tmp_path / "d")
    first = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=40, progress=False))
    second = stage_dataset(StageConfig(sample_release, dest, rows_per_shard=40, progress=False, keep_previous=True))
    for manifest in (first, second):
        assert len(shard_rows(dest, manifest)) == 4 * 24
    # a dataset staged before versions (shards at DEST/train/): replaced as version 1, then removed
    old = str(tmp_path / "old")
    os.makedirs(os.path.join(old, "train"))
    os.rename(os.path.join(dest, first["train"]["shards"][0]["path"]), os.path.join(old, "train", "part-00000.parquet"))
    legacy = {**first, "train": {**first["train"], "shards": [{**first["train"]["shards"][0],
                                                               "path": "train/part-00000.parquet"}]}}
    legacy.pop("version")
    open(os.path.join(old, "manifest.json"), "w").write(json.dumps(legacy))
    new = stage_dataset(StageConfig(sample_release, old, rows_per_shard=40, progress=False))
    assert new["version"] == 1 and not os.path.exists(os.path.join(old, "train"))


# ------------------------------------------------------------------------------- downloads


class Release(http.server.BaseHTTPRequestHandler):
    body = b""
    stall = False

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.stall:
            time.sleep(5)  # headers, then silence
            return
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(sample_release, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a private download cache
    Release.body = open(zip_release(sample_release, tmp_path / "rel.zip"), "rb").read()
    Release.stall = False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Release)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/tiny-imagenet-200.zip"
    httpd.shutdown()


def cache_files(tmp_path):
    folder = tmp_path / "home" / ".cache" / "tinyray" / "downloads"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_a_download_is_https_unless_allowed_checked_and_cached_by_url_and_size(server, sample_release, tmp_path):
    dest = str(tmp_path / "d")
    with pytest.raises(TinyrayError, match=r"^http://127.0.0.1:\d+/tiny-imagenet-200.zip: plain http can be "):
        stage_dataset(StageConfig(server, dest, progress=False))
    good = hashlib.sha256(Release.body).hexdigest()
    with pytest.raises(TinyrayError, match=r"has sha256 [0-9a-f]{64}, not the 0{64} given with --sha256: not used"):
        stage_dataset(StageConfig(server, dest, progress=False, allow_http=True, sha256="0" * 64))
    assert cache_files(tmp_path) == []  # nothing unverified is kept
    manifest = stage_dataset(StageConfig(server, dest, progress=False, allow_http=True, sha256=good))
    assert manifest["train"]["count"] == 4 * 24
    key = hashlib.sha256(server.encode()).hexdigest()[:16]
    assert cache_files(tmp_path) == [f"{key}-{len(Release.body)}-tiny-imagenet-200.zip"]
    # the same URL now serving another release (another size) is fetched anew, not the cache's
    folder = first_images(sample_release, 0)[1]
    Release.body = open(zip_release(sample_release, tmp_path / "rel2.zip", extra=[(folder + "new_0.JPEG", jpeg())]),
                        "rb").read()
    assert stage_dataset(StageConfig(server, dest, progress=False, allow_http=True))["train"]["count"] == 4 * 24 + 1
    assert len(cache_files(tmp_path)) == 2


def test_a_download_over_the_cap_stalled_or_unreachable_is_one_line(server, tmp_path, monkeypatch):
    dest = str(tmp_path / "d")
    with pytest.raises(TinyrayError, match=r"is [\d,]+ bytes, over the 1,000-byte download cap \(--max-bytes"):
        stage_dataset(StageConfig(server, dest, progress=False, allow_http=True, max_bytes=1000))
    monkeypatch.setenv("TINYRAY_DOWNLOAD_TIMEOUT", "1")
    Release.stall = True
    start = time.monotonic()
    with pytest.raises(TinyrayError, match=r"^could not download .*: .*nothing arrived for 1 s"):
        stage_dataset(StageConfig(server, dest, progress=False, allow_http=True))
    assert time.monotonic() - start < 4 and cache_files(tmp_path) == []
    with pytest.raises(TinyrayError, match=r"^could not download http://127.0.0.1:9/x.zip: "):
        stage_dataset(StageConfig("http://127.0.0.1:9/x.zip", dest, progress=False, allow_http=True))
    with pytest.raises(TinyrayError, match="--sha256 must be 64 hex digits"):
        StageConfig(server, dest, sha256="abc")
    assert not os.path.exists(dest)  # nothing was staged by any of these


# ----------------------------------------------------------------------- the embedded endpoint


def signed(s3, method, path, headers=(), secret=None):
    """A request to the embedded store signed by botocore's own SigV4 signer, sent by urllib."""
    import urllib.error
    import urllib.request

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=s3.endpoint_url + path, headers=dict(headers))
    S3SigV4Auth(Credentials(s3.ACCESS_KEY, secret or s3.SECRET_KEY), "s3", "us-east-1").add_auth(req)
    try:
        with urllib.request.urlopen(urllib.request.Request(req.url, method=method, headers=dict(req.headers)),
                                    timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def plain(s3, method, path, headers=()):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(s3.endpoint_url + path, method=method,
                                                           headers=dict(headers)), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_embedded_endpoint_serves_only_requests_signed_with_its_keys_and_no_other_origin(s3):
    from tinyray.data.storage import s3_client

    s3_client(s3.options).put_object(Bucket="tinyray", Key="private/export.json", Body=b"{}")
    page = {"Origin": "http://evil.example"}
    status, headers, body = signed(s3, "GET", "/tinyray/private/export.json", page)
    assert (status, body) == (200, b"{}")
    assert not [h for h in headers if h.lower().startswith("access-control-")], headers  # no CORS for a page
    for method in ("GET", "PUT", "DELETE"):  # what a page (or anything unsigned) could send
        status, headers, body = plain(s3, method, "/tinyray/private/export.json", page)
        assert status == 403 and b"the request is not signed" in body, (method, status, body)
        assert "Access-Control-Allow-Origin" not in headers
    status, headers, body = plain(s3, "OPTIONS", "/tinyray/private/export.json",
                                  {**page, "Access-Control-Request-Method": "DELETE"})
    assert status == 403 and b"no CORS" in body and "Access-Control-Allow-Origin" not in headers
    assert signed(s3, "GET", "/tinyray/private/export.json", secret="guessed")[0] == 403
    url = s3_client(s3.options).generate_presigned_url("get_object", Params={"Bucket": "tinyray",
                                                                            "Key": "private/export.json"})
    status, _, body = plain(s3, "GET", url[len(s3.endpoint_url):])
    assert status == 403 and b"presigned URL" in body
    assert s3_client(s3.options).get_object(Bucket="tinyray", Key="private/export.json")["Body"].read() == b"{}"


def test_a_port_the_embedded_endpoint_cannot_bind_is_one_line_at_once(s3):
    from tinyray.data.storage import EmbeddedS3

    start = time.monotonic()
    with pytest.raises(TinyrayError, match=rf"^the embedded S3 endpoint cannot listen on 127.0.0.1:{s3.port} "
                                           r"\(\[Errno 98\] Address already in use\): pick another --port$"):
        EmbeddedS3(port=s3.port).start()
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------ the weights cache


def test_the_weights_cache_follows_the_source_and_processes_never_share_a_part_file(s3, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from tinyray.data.storage import fetch_to_cache, s3_client

    monkeypatch.setenv("HOME", str(tmp_path))
    client, uri = s3_client(s3.options), "s3://tinyray/weights/base.h5"
    client.put_object(Bucket="tinyray", Key="weights/base.h5", Body=b"A" * 3_000_000)
    with ThreadPoolExecutor(4) as pool:  # four GPUs' processes on one node, at once
        paths = list(pool.map(lambda _: fetch_to_cache(uri, s3.options), range(4)))
    assert len(set(paths)) == 1 and open(paths[0], "rb").read() == b"A" * 3_000_000
    folder = os.path.dirname(paths[0])
    assert sorted(os.listdir(folder)) == ["base.h5", "base.h5.etag"]  # no .part left behind
    before = os.stat(paths[0]).st_mtime_ns
    assert fetch_to_cache(uri, s3.options) == paths[0] and os.stat(paths[0]).st_mtime_ns == before  # cached
    client.put_object(Bucket="tinyray", Key="weights/base.h5", Body=b"B" * 3_000_000)  # same size, new bytes
    assert open(fetch_to_cache(uri, s3.options), "rb").read() == b"B" * 3_000_000
    open(paths[0], "wb").write(b"B" * 10)  # a cached copy cut short is fetched again
    assert open(fetch_to_cache(uri, s3.options), "rb").read() == b"B" * 3_000_000
    with pytest.raises(TinyrayError, match=r"^s3://tinyray/weights/missing.h5 does not exist at "):
        fetch_to_cache("s3://tinyray/weights/missing.h5", s3.options)
