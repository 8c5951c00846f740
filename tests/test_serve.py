"""tinyray serve: the request parsing (pure), then the command itself on the session's Ray cluster,
asked over real HTTP on loopback."""
import concurrent.futures
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tinyray.serve import form_parts, image_from_request, parse_top

from conftest import free_port
from test_export import write_experiment

JPEG = b"\xff\xd8\xff\xe0 a jpeg's bytes \r\n\r\n with blank lines \r\n--not-the-boundary\r\n"


def multipart(files: dict, fields: dict | None = None, boundary: str = "b0und4ry") -> tuple[bytes, str]:
    """A multipart/form-data body as a browser or curl -F writes it."""
    out = b""
    for name, value in (fields or {}).items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for name, data in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_an_image_is_the_raw_body_or_the_one_file_of_a_form_byte_for_byte():
    assert image_from_request(JPEG, "image/jpeg") == (None, JPEG)
    assert image_from_request(JPEG, None) == (None, JPEG)
    body, ctype = multipart({"cat.jpeg": JPEG}, {"note": "a plain field is not a file"})
    assert image_from_request(body, ctype) == ("cat.jpeg", JPEG)
    assert form_parts(body, "b0und4ry") == [(None, b"a plain field is not a file"), ("cat.jpeg", JPEG)]


@pytest.mark.parametrize("body,ctype,message", [
    (b"", "image/jpeg", "the request holds no image"),
    (multipart({"a.jpeg": JPEG, "b.jpeg": JPEG})[0], multipart({})[1], "send one image per request: the form holds 2"),
    (multipart({}, {"x": "1"})[0], multipart({})[1], "the form holds 0 files"),
    (multipart({"a.jpeg": b""})[0], multipart({})[1], "a.jpeg is empty"),
    (multipart({"a.jpeg": JPEG})[0][:-20], multipart({})[1], "cut short or malformed"),
    (b"--x\r\n", "multipart/form-data", "needs a boundary"),
])
def test_a_request_without_exactly_one_image_is_one_line(body, ctype, message):
    with pytest.raises(ValueError, match=message):
        image_from_request(body, ctype)


def test_top_k_of_a_request_is_bounded_by_the_classes():
    assert (parse_top(None, 5, 4), parse_top(None, 3, 200), parse_top("2", 5, 4)) == (4, 3, 2)
    for bad, message in (("0", "give 1 to 4"), ("5", "give 1 to 4"), ("two", "not a whole number")):
        with pytest.raises(ValueError, match=message):
            parse_top(bad, 5, 4)


def test_serve_refuses_what_is_not_an_export_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tinyray.cli", "serve", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"tinyray: error: {tmp_path} is not a tinyray export (no export.json of format tinyray-export/1): make one "
        "with 'tinyray export EXPERIMENT --to DIR'"]


def _post(url: str, data: bytes, ctype: str = "application/octet-stream") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tinyray_serve_answers_what_predict_does_refuses_bad_images_and_keeps_up_with_a_burst(
        ray_cluster, tmp_path, sample_release, capsys):
    import glob

    from ray import serve

    from tinyray.export import export_model
    from tinyray.predict import Export, predict_files

    export = export_model(str(write_experiment(tmp_path)), str(tmp_path / "export"))
    images = sorted(glob.glob(os.path.join(sample_release, "val", "images", "*.JPEG")))[:3]
    expected = {os.path.basename(d["file"]): d["top"] for d in predict_files(Export(export), images, k=3)[0]}
    port = free_port()
    gcs = ray_cluster.get_runtime_context().gcs_address
    # a user's shell: without the TF log level that importing tinyray set in this process
    shell = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyray.cli", "serve", export, "--port", str(port),
                             "--address", gcs, "--top", "3", "--max-bytes", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shell)
    try:
        first = proc.stdout.readline()  # the command's bound ends this wait too (TINYRAY_SERVE_TIMEOUT)
        url = f"http://127.0.0.1:{port}/predict"
        assert first.startswith("serving tinycnn-adam-lr0.003-b8x1-e2-s0 (4 classes) on 1 replica(s) at " + url), (
            first + proc.stderr.read() if proc.poll() is not None else first)

        # a known image: predict's top-3, raw and as a form's file
        for path in images:
            data = open(path, "rb").read()
            for body, ctype, name in ((data, "image/jpeg", None), (*multipart({os.path.basename(path): data}),
                                                                   os.path.basename(path))):
                status, answer = _post(url, body, ctype)
                assert status == 200 and answer["file"] == name
                want = expected[os.path.basename(path)]
                assert [t["wnid"] for t in answer["top"]] == [t["wnid"] for t in want]
                np.testing.assert_allclose([t["prob"] for t in answer["top"]], [t["prob"] for t in want], atol=1e-5)

        # a broken image, another format, a body over --max-bytes: a 400 with one line each
        from PIL import Image

        gif = io.BytesIO()
        Image.new("RGB", (8, 8)).save(gif, "GIF")
        for body, message in ((b"not a jpeg", "not a readable image"), (gif.getvalue(), "not a readable image"),
                              (b"\xff" * 100_001, "over the 100,000-byte limit")):
            status, answer = _post(url, body)
            assert status == 400 and message in answer["error"] and "\n" not in answer["error"]
        assert _post(url + "?top=9", open(images[0], "rb").read())[1] == {"error": "top=9: give 1 to 4 (the model's "
                                                                                    "classes)"}

        # a burst: 200 requests from 8 threads, every one answered
        data = open(images[0], "rb").read()

        def ask(_):
            start = time.perf_counter()
            status, answer = _post(url, data, "image/jpeg")
            return status, answer["top"][0]["wnid"], time.perf_counter() - start

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(200)))
        assert [(s, w) for s, w, _ in answers] == [(200, expected[os.path.basename(images[0])][0]["wnid"])] * 200
        latency = np.array([t for _, _, t in answers]) * 1000
        with capsys.disabled():
            print("\nserve burst: " + json.dumps({"requests": 200, "threads": 8, "p50_ms": round(float(np.percentile(
                latency, 50)), 1), "p99_ms": round(float(np.percentile(latency, 99)), 1)}))

        # Ctrl-C: the application is deleted, the command ends cleanly
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "stopped: the application is deleted", err
        assert "tinyray" not in serve.status().applications
        assert not [line for line in err.splitlines() if line.strip()], err  # quiet: no Ray, Serve or TF lines

        # replicas that no node can hold: a bounded wait, then one line with what was asked and what is free
        out = subprocess.run([sys.executable, "-m", "tinyray.cli", "serve", export, "--port", str(port), "--address",
                              gcs, "--gpus-per-replica", "1"], capture_output=True, text=True, timeout=300,
                             env={**shell, "TINYRAY_SERVE_TIMEOUT": "15"})
        assert out.returncode == 1 and out.stdout == ""
        assert re.fullmatch(r"tinyray: error: the Serve replicas did not start within 15 s \(TINYRAY_SERVE_TIMEOUT, "
                            r"state DEPLOYING\): each asks for 1 CPU and 1 GPU, and the cluster has [\d.]+ CPU and 0 "
                            r"GPU free \(see `ray status`\)", out.stderr.strip()), out.stderr
        deadline = time.monotonic() + 60  # the command asked Serve to delete it, without waiting
        while "tinyray" in serve.status().applications and time.monotonic() < deadline:
            time.sleep(1)
        assert "tinyray" not in serve.status().applications
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        serve.shutdown()
