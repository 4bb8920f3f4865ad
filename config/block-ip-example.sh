#!/bin/sh
# Example `exec` handler for flag events: records the flagged IP (argv[1], from the envelope's
# /payload/source) with the event id in flagged-ips.txt beside this script. A real one would call
# the firewall's API; exit 0 means delivered, anything else is retried.
set -eu
ip="$1"
case "$ip" in
    *[!0-9a-fA-F.:]*|"") echo "not an IP address: $ip" >&2; exit 2 ;;
esac
echo "$ip $SIGSCI_EVENT_ID $SIGSCI_CREATED" >> "$(dirname "$0")/flagged-ips.txt"
echo "recorded $ip"
