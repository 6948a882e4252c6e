#!/bin/sh
# Open MPI's rsh agent for the two-host test (--mca plm_rsh_agent): called as
#   rsh_agent.sh HOST COMMAND...
# like ssh, it runs COMMAND on HOST: inside HOST's network namespace, with HOST as its hostname
# (its own UTS namespace), so Open MPI sees another node. The namespace of each host name is in
# $ZR_MH_NETNS_<HOST> (set by two_hosts.sh; the host names have no dashes).
host="$1"
shift
eval ns="\${ZR_MH_NETNS_${host}:-}"
if [ -z "$ns" ]; then
  echo "rsh_agent.sh: unknown host '$host'" >&2
  exit 255
fi
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && exec $*"
