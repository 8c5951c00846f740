"""Credentials and regions as AWS users expect: the standard chain with session tokens, and a
bucket's own region when none is set (asked of the store, here the embedded one)."""
import pickle

import pytest

from tinyray.data.storage import EmbeddedS3, StorageOptions, bucket_region, filesystem, s3_client


TEMPORARY = {"AWS_ACCESS_KEY_ID": "ASIATEMP", "AWS_SECRET_ACCESS_KEY": "SECRET", "AWS_SESSION_TOKEN": "TOKEN-VALUE",
             "AWS_REGION": "eu-west-1"}


def test_temporary_credentials_keep_their_session_token():
    opts = StorageOptions.from_env(env=TEMPORARY)
    assert "TOKEN-VALUE" not in repr(opts)
    creds = s3_client(opts)._request_signer._credentials
    assert (creds.access_key, creds.token) == ("ASIATEMP", "TOKEN-VALUE")
    fs, _ = filesystem("s3://bkt/x", opts)  # the driver's own, signed pyarrow filesystem
    assert b"TOKEN-VALUE" in pickle.dumps(fs)
    assert b"TOKEN-VALUE" not in pickle.dumps(filesystem("s3://bkt/x", opts, ship=True)[0])  # never travels
    assert "AWS_SESSION_TOKEN" not in opts.public_env()
    assert opts.to_env() == TEMPORARY  # for a process the user starts themselves


def test_no_keys_in_the_environment_leave_signing_to_boto3s_chain(monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[profile team]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    opts = StorageOptions.from_env(env={"AWS_PROFILE": "team"})
    assert (opts.access_key, opts.secret_key, opts.session_token) == (None, None, None)
    assert opts.region == "ap-southeast-2"  # the profile's region


def test_with_no_region_set_a_bucket_is_used_in_its_own_region():
    import boto3

    with EmbeddedS3(bucket=None) as s3:
        key, secret = s3.ACCESS_KEY, s3.SECRET_KEY  # the only keys it takes (private_s3)
        keys = {"AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret,
                     region_name="eu-west-1").create_bucket(
            Bucket="in-ireland", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        opts = StorageOptions.from_env(env=keys)
        assert opts.region is None
        assert bucket_region("in-ireland", opts) == "eu-west-1"
        fs, path = filesystem("s3://in-ireland/data", opts)
        assert fs.region == "eu-west-1"
        with fs.open_output_stream(path + "/x") as f:
            f.write(b"hello")
        resolved = opts.for_bucket("s3://in-ireland/data")
        assert resolved.public_env()["AWS_REGION"] == "eu-west-1"  # what travels to workers
        assert filesystem("s3://in-ireland/data", opts, ship=True)[0].region == "eu-west-1"
        # a region that was set is kept
        assert StorageOptions.from_env(env={**keys, "AWS_REGION": "us-west-2"}).for_bucket("s3://in-ireland").region == "us-west-2"


def test_a_missing_bucket_is_one_line_when_its_region_is_asked():
    from tinyray.errors import TinyrayError

    with EmbeddedS3(bucket=None) as s3:
        opts = StorageOptions(s3.endpoint_url, s3.ACCESS_KEY, s3.SECRET_KEY)
        with pytest.raises(TinyrayError, match="bucket 'nowhere' does not exist"):
            bucket_region("nowhere", opts)
