# The failover-drill topology: two nodes (the two "SEs", or two keepalived
# routers) and a client on one L2 segment, all in network namespaces of their
# own, so only these namespaces see the drill's traffic (the host's interfaces
# and routes are never touched). Sourced, not run; used by
# benches/ha-keepalived.sh and meant for `fabric drill failover`, so both run in
# exactly the same topology.
#
#   PREFIX-br   bridge br0 (STP off, multicast snooping off: VRRP adverts and
#               broadcast ARP reach every port), one veth port per node:
#               veth-a, veth-b, veth-c, veth-s
#   PREFIX-a    node a, eth0 10.99.7.11/24   (the first master)
#   PREFIX-b    node b, eth0 10.99.7.12/24   (the standby)
#   PREFIX-c    client, eth0 10.99.7.100/24
#   PREFIX-s    backend server, eth0 10.99.7.20/24 (idle unless a drill
#               starts an origin there: the keepalived side has its nodes
#               answer HTTP themselves)
#   VIP         10.99.7.10, held by neither node after pair_up: whoever
#               claims it adds it to its eth0 (/32, as keepalived's
#               virtual_ipaddress without a mask and fabric's
#               --l2-prefix-len default) and announces it with GARP.
#
# Every namespace has lo up and ip_nonlocal_bind=1 (a standby can bind the
# VIP before it holds it). The interface inside each node namespace is
# always eth0 (`fabric se --l2-interface eth0`). Each veth is created with
# both ends already in their namespaces (never in the host's).
#
# Functions (PREFIX e.g. fkad; NODE one of a b c s):
#   pair_up PREFIX              pair_down PREFIX first, then build the above
#   pair_down PREFIX            kill every process in a PREFIX-* namespace
#                               (SIGKILL, by pid from `ip netns pids`), delete
#                               every namespace named PREFIX-*, also ones left
#                               by an earlier run; bounded (about 3 s at most)
#   pair_ns PREFIX NODE         print the namespace name (PREFIX-NODE)
#   pair_ip NODE                print NODE's address (no mask)
#   pair_mac PREFIX NODE        print the MAC of NODE's eth0
#   pair_link PREFIX NODE up|down   set NODE's eth0 up or down
#   pair_has_vip PREFIX NODE    true if NODE's eth0 holds the VIP
#   pair_flush_neigh PREFIX NODE    forget NODE's neighbour (ARP) entries
# Variables: PAIR_NET (10.99.7, override before sourcing), PAIR_VIP,
# PAIR_IFACE (eth0), PAIR_NODES ("a b c s").

PAIR_NET=${PAIR_NET:-10.99.7}
PAIR_VIP=$PAIR_NET.10
PAIR_IFACE=eth0
PAIR_NODES="a b c s"

pair_ns() { echo "$1-$2"; }
pair_ip() { case $1 in a) echo "$PAIR_NET.11";; b) echo "$PAIR_NET.12";;
  c) echo "$PAIR_NET.100";; s) echo "$PAIR_NET.20";; *) echo "pair_ip: no node $1" >&2; return 1;; esac; }
pair_mac() { ip -n "$1-$2" -o link show dev "$PAIR_IFACE" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p'; }
pair_link() { ip -n "$1-$2" link set "$PAIR_IFACE" "$3"; }
pair_has_vip() { local a; a=$(ip -n "$1-$2" -4 -o addr show dev "$PAIR_IFACE" 2>/dev/null) || return 1
  case $a in *" $PAIR_VIP/"*) return 0;; *) return 1;; esac; }
pair_flush_neigh() { ip -n "$1-$2" neigh flush dev "$PAIR_IFACE" 2>/dev/null || true; }

pair_down() {
  local p=$1 ns pid i left list
  list=$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$p-" || true)
  [ -n "$list" ] || return 0
  for ns in $list; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for i in $(seq 1 30); do            # bounded: 30 x 0.1 s for them to exit
    left=0
    for ns in $list; do if [ -n "$(ip netns pids "$ns" 2>/dev/null)" ]; then left=1; fi; done
    [ $left = 0 ] && break; sleep 0.1
  done
  for ns in $list; do ip netns del "$ns" 2>/dev/null || true; done
}

pair_up() {
  local p=$1 n ip
  pair_down "$p"
  ip netns add "$p-br"
  ip -n "$p-br" link set lo up
  ip -n "$p-br" link add br0 type bridge stp_state 0 mcast_snooping 0
  ip -n "$p-br" link set br0 up
  for n in $PAIR_NODES; do
    ip netns add "$p-$n"
    ip link add "$PAIR_IFACE" netns "$p-$n" type veth peer name "veth-$n" netns "$p-br"
    ip -n "$p-br" link set "veth-$n" master br0 up
    ip=$(pair_ip "$n")
    ip -n "$p-$n" addr add "$ip/24" dev "$PAIR_IFACE"
    ip -n "$p-$n" link set "$PAIR_IFACE" up
    ip -n "$p-$n" link set lo up
    ip netns exec "$p-$n" sysctl -qw net.ipv4.ip_nonlocal_bind=1
  done
}
