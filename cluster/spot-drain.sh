#!/usr/bin/env bash
# On a spot node: turn EC2's two-minute spot interruption notice into a Ray drain with reason
# PREEMPTION. Ray Train then tells the run's workers (ray.train.get_preemption_info), which save a
# checkpoint at the step they are at, and the run resumes there on another node once this one is
# gone (docs/reliability.md). Nothing else tells Ray: without this, a reclaimed spot node is
# a lost node, and the run resumes from its last finished epoch instead.
#
# Started in the background on the spot node types of cluster/aws-gpu.yaml. It polls the
# instance metadata service (IMDSv2) every 5 s; the drain defaults to this node, of the cluster
# this node joined.
set -u
imds=http://169.254.169.254/latest
while true; do
  token=$(curl -s -m 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/api/token")
  code=$(curl -s -m 2 -o /tmp/spot-instance-action -w '%{http_code}' -H "X-aws-ec2-metadata-token: $token" \
    "$imds/meta-data/spot/instance-action")
  if [ "$code" = 200 ]; then
    # EC2 stops the instance about 120 s after the notice; leave Ray Train 110 of them.
    ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION \
      --reason-message "EC2 spot interruption: $(cat /tmp/spot-instance-action)" \
      --deadline-remaining-seconds 110
    exit 0
  fi
  sleep 5
done
