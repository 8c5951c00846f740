"""The release layout, read exactly (pure; no Ray)."""
import os
import zipfile

import pytest

from tinyray.data.layout import (ReleaseFiles, parse_val_annotations, parse_wnids, parse_words,
                                 scan_release)
from tinyray.errors import TinyrayError

from conftest import SAMPLE


def test_wnids_keep_file_order_as_label_order():
    assert parse_wnids("n02\nn01\n\nn03\n") == ["n02", "n01", "n03"]


def test_duplicate_wnid_is_an_error():
    with pytest.raises(TinyrayError, match=r"'n01' twice \(line 3\)"):
        parse_wnids("n01\nn02\nn01\n")


def test_words_keeps_only_the_listed_classes_and_falls_back_to_the_wnid():
    words = "n01\tgoldfish, Carassius auratus\nn99\tnot ours\nn02\tcat\n"
    assert parse_words(words, ["n02", "n01", "n03"]) == {"n02": "cat", "n01": "goldfish, Carassius auratus", "n03": "n03"}


def test_val_annotations_map_file_to_wnid():
    text = "val_0.JPEG\tn01\t0\t1\t2\t3\nval_1.JPEG\tn02\t5\t5\t60\t60\n"
    labels, skipped = parse_val_annotations(text, {"n01": 0, "n02": 1})
    assert labels == {"val_0.JPEG": "n01", "val_1.JPEG": "n02"} and skipped == []


def test_val_annotation_with_unknown_wnid_names_wnid_and_line():
    text = "val_0.JPEG\tn01\t0\t0\t1\t1\nval_1.JPEG\tn77\t0\t0\t1\t1\n"
    with pytest.raises(TinyrayError, match=r"line 2: wnid 'n77' \(for val_1.JPEG\) is not in wnids.txt"):
        parse_val_annotations(text, {"n01": 0})


def test_skip_bad_labels_lists_the_line_instead():
    text = "val_0.JPEG\tn01\t0\t0\t1\t1\nval_1.JPEG\tn77\t0\t0\t1\t1\ngarbage\n"
    labels, skipped = parse_val_annotations(text, {"n01": 0}, skip_bad_labels=True)
    assert labels == {"val_0.JPEG": "n01"}
    assert skipped == [
        {"file": "val/images/val_1.JPEG", "reason": "label n77 not in wnids.txt (val_annotations.txt line 2)"},
        {"file": "val/val_annotations.txt:3", "reason": "malformed annotation line"},
    ]


def test_scan_sample_release(sample_release):
    release = scan_release(ReleaseFiles(sample_release))
    assert len(release.classes) == SAMPLE.classes
    assert len(release.train) == SAMPLE.classes * SAMPLE.train_per_class
    assert len(release.val) == SAMPLE.classes * SAMPLE.val_per_class
    assert release.skipped == []
    # words.txt lists more classes than wnids.txt; only ours are kept
    assert set(release.names) == set(release.classes)
    first = release.train[0]
    assert first.file.startswith(f"train/{first.wnid}/images/") and release.classes[first.label] == first.wnid
    # test/ has no labels and is not staged
    assert not any(e.file.startswith("test/") for e in release.train + release.val)


def test_zip_reads_exactly_like_the_folder(sample_release, tmp_path):
    zpath = tmp_path / "tiny-imagenet-200.zip"
    parent = os.path.dirname(sample_release)
    with zipfile.ZipFile(zpath, "w") as z:
        for dirpath, _, files in os.walk(sample_release):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, parent))  # entries start with tiny-imagenet-200/
    a = scan_release(ReleaseFiles(sample_release))
    b = scan_release(ReleaseFiles(str(zpath)))
    assert a.train == b.train and a.val == b.val and a.classes == b.classes
    assert ReleaseFiles(str(zpath)).read_bytes(a.train[0].file) == ReleaseFiles(sample_release).read_bytes(a.train[0].file)


def test_parent_folder_of_the_release_is_accepted(sample_release):
    assert scan_release(ReleaseFiles(os.path.dirname(sample_release))).classes == \
        scan_release(ReleaseFiles(sample_release)).classes


@pytest.mark.parametrize("missing", ["wnids.txt", "val/val_annotations.txt"])
def test_missing_required_file_is_a_clear_error(release_copy, missing):
    os.remove(os.path.join(release_copy, missing))
    with pytest.raises(TinyrayError, match=f"{missing} is missing"):
        scan_release(ReleaseFiles(release_copy))


def test_unlabelled_val_image_and_missing_val_image_are_listed(release_copy):
    ann = os.path.join(release_copy, "val", "val_annotations.txt")
    lines = open(ann).read().splitlines()
    open(ann, "w").write("\n".join(lines[1:]) + "\nghost.JPEG\t" + lines[0].split("\t")[1] + "\t0\t0\t1\t1\n")
    release = scan_release(ReleaseFiles(release_copy))
    reasons = {s["file"]: s["reason"] for s in release.skipped}
    assert reasons[f"val/images/{lines[0].split(chr(9))[0]}"] == "no line in val_annotations.txt"
    assert reasons["val/images/ghost.JPEG"] == "listed in val_annotations.txt but missing"
    assert len(release.val) == SAMPLE.classes * SAMPLE.val_per_class - 1


def test_train_folder_not_in_wnids_is_listed_not_dropped(release_copy):
    wnids = open(os.path.join(release_copy, "wnids.txt")).read().split()
    with open(os.path.join(release_copy, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids[:-1]))
    with pytest.raises(TinyrayError, match=wnids[-1]):  # its val annotations now name an unknown wnid
        scan_release(ReleaseFiles(release_copy))
    release = scan_release(ReleaseFiles(release_copy), skip_bad_labels=True)
    extra = [s for s in release.skipped if s["reason"] == f"train folder {wnids[-1]} not in wnids.txt"]
    assert len(extra) == SAMPLE.train_per_class


def test_not_a_release(tmp_path):
    with pytest.raises(TinyrayError, match="does not exist"):
        ReleaseFiles(str(tmp_path / "nowhere"))
    (tmp_path / "wnids.txt").write_text("n01\n")
    (tmp_path / "words.txt").write_text("")
    with pytest.raises(TinyrayError, match="not a Tiny ImageNet release"):
        scan_release(ReleaseFiles(str(tmp_path)))
