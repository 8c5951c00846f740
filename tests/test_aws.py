"""cluster/aws-gpu.yaml and cluster/iam/ read by what reads them on a real deploy: Ray 2.60's own
AWS bootstrap (the first thing `ray up` does) and Ray's AWS node provider (what the head's
autoscaler launches workers with), against moto's emulated EC2 and IAM. The node launch runs
with IAM enforcement on, signed as a principal that holds only the head's policy."""
import copy
import json
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "cluster")
ACCOUNT = "123456789012"  # moto's account
REGION = "us-west-2"


def policy(name, bucket="tinyray-bucket"):
    text = open(os.path.join(CLUSTER, "iam", name)).read()
    return text.replace("ACCOUNT_ID", ACCOUNT).replace("BUCKET", bucket)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """moto's AWS, with the README's IAM set-up done: a head and a worker role and profile."""
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the cluster's SSH key under ~/.ssh
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    with mock_aws():
        iam = boto3.client("iam")
        for role in ("head", "worker"):
            name = f"tinyray-{role}"
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=policy("trust-policy.json"))
            iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=policy(f"{role}-policy.json"))
            iam.create_instance_profile(InstanceProfileName=name)
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        ami = boto3.client("ec2", region_name=REGION).describe_images()["Images"][0]["ImageId"]
        yield ami


def shipped_config(ami):
    with open(os.path.join(CLUSTER, "aws-gpu.yaml")) as f:
        text = f.read()
    assert "ACCOUNT_ID" in text and "AMI_ID" in text  # the two placeholders the README fills in
    return yaml.safe_load(text.replace("ACCOUNT_ID", ACCOUNT).replace("AMI_ID", ami))


def bootstrap(config):
    from ray.autoscaler._private.commands import _bootstrap_config

    return _bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def test_rays_own_aws_bootstrap_accepts_the_shipped_config(aws):
    import boto3

    config = bootstrap(shipped_config(aws))
    ec2 = boto3.client("ec2", region_name=REGION)
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["tinyray-ssh-only"]}])
    (group,) = groups["SecurityGroups"]
    world = [p for p in group["IpPermissions"] if any(r["CidrIp"] == "0.0.0.0/0" for r in p.get("IpRanges", []))]
    assert [(p["FromPort"], p["ToPort"]) for p in world] == [(22, 22)]  # only SSH is open to the world
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"]["Arn"].endswith("instance-profile/tinyray-head")
    workers = [t["node_config"] for n, t in types.items() if n != config["head_node_type"]]
    assert workers and all(w["IamInstanceProfile"]["Arn"].endswith("instance-profile/tinyray-worker") for w in workers)
    assert all(t["node_config"]["ImageId"] == aws for t in types.values())  # the pinned AMI, never Ray's default
    assert config["head_node"] == {}  # Ray made no role of its own: the head uses the one we gave it


def test_the_head_policy_can_launch_tag_and_stop_a_gpu_worker_under_iam_enforcement(aws):
    import boto3
    from moto.core import set_initial_no_auth_action_count
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    config = bootstrap(shipped_config(aws))
    # A principal holding exactly the head role's policy (moto enforces user policies).
    iam = boto3.client("iam")
    iam.create_user(UserName="head")
    iam.put_user_policy(UserName="head", PolicyName="head", PolicyDocument=policy("head-policy.json"))
    key = iam.create_access_key(UserName="head")["AccessKey"]
    worker = config["available_node_types"]["gpu_1x_spot"]["node_config"]

    @set_initial_no_auth_action_count(0)
    def launch_and_stop():
        signed_as_head = {**config["provider"], "aws_credentials": {
            "aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}}
        provider = AWSNodeProvider(signed_as_head, config["cluster_name"])
        tags = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: "gpu_1x_spot"}
        provider.create_node(worker, tags, 1)
        (node,) = provider.non_terminated_nodes(tags)
        assert provider.node_tags(node)[TAG_RAY_USER_NODE_TYPE] == "gpu_1x_spot"
        provider.terminate_node(node)
        return node

    assert launch_and_stop()


def test_the_worker_policy_cannot_launch_instances(aws):
    import boto3
    from botocore.exceptions import ClientError
    from moto.core import set_initial_no_auth_action_count

    iam = boto3.client("iam")
    iam.create_user(UserName="worker")
    iam.put_user_policy(UserName="worker", PolicyName="worker", PolicyDocument=policy("worker-policy.json"))
    key = iam.create_access_key(UserName="worker")["AccessKey"]

    @set_initial_no_auth_action_count(0)
    def try_launch():
        ec2 = boto3.client("ec2", region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                           aws_secret_access_key=key["SecretAccessKey"])
        with pytest.raises(ClientError, match="not authorized|AccessDenied|UnauthorizedOperation"):
            ec2.run_instances(ImageId=aws, MinCount=1, MaxCount=1, InstanceType="g5.xlarge")

    try_launch()


def test_worker_policy_reaches_the_bucket_prefixes_and_nothing_else():
    doc = json.loads(policy("worker-policy.json"))
    actions = {a for s in doc["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert all(a.startswith("s3:") for a in actions)
    resources = {r for s in doc["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    assert "arn:aws:s3:::tinyray-bucket/*" not in resources  # prefixes, not the whole bucket
    writes = [s for s in doc["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == ["arn:aws:s3:::tinyray-bucket/experiments/*"]


def test_rsync_keeps_the_virtualenv_git_and_secrets_off_the_nodes():
    """The arguments Ray's own command runner gives rsync for `ray up`'s file mounts."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    with open(os.path.join(CLUSTER, "aws-gpu.yaml")) as f:
        config = yaml.safe_load(f)
    runner = SSHCommandRunner.__new__(SSHCommandRunner)
    args = runner._create_rsync_filter_args({"rsync_exclude": config.get("rsync_exclude"),
                                             "rsync_filter": config.get("rsync_filter")})
    excluded = {args[i + 1] for i, a in enumerate(args) if a == "--exclude"}
    assert {".venv", ".git", ".env"} <= excluded and any(".pem" in e for e in excluded)
    assert ["--filter", "dir-merge,- .gitignore"] == args[-2:]
    gitignore = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert ".venv/" in gitignore and ".env" in gitignore
