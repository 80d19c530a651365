#!/usr/bin/env bash
# The main job: build, start the host on an embedded data directory, deploy
# the order-approval example with its activities, and run orders to the end.
# With --keep, the host (and the partner) stay running afterwards, and the
# script prints the web console's address; Ctrl-C stops them.
cd "$(dirname "$0")/.."
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        *) echo "usage: scripts/demo.sh [--keep]" >&2; exit 2 ;;
    esac
done
source scripts/env.sh
build_all
CAIRN="$CARGO_TARGET_DIR/release/cairn"
WASM="$CARGO_TARGET_DIR/wasm32-wasip2/release"
DATA="${CAIRN_DEMO_DATA:-./cairn-data/demo}"
PORT="${CAIRN_DEMO_PORT:-7700}"
PARTNER_PORT="${CAIRN_DEMO_PARTNER_PORT:-7702}"
PARTNER="http://127.0.0.1:$PARTNER_PORT"
export CAIRN_SERVER="http://127.0.0.1:$PORT"
rm -rf "$DATA"
mkdir -p "$DATA"
echo "==> cairn partner --listen 127.0.0.1:$PARTNER_PORT (a local HTTP partner that records what it receives)" >&2
"$CAIRN" partner --listen "127.0.0.1:$PARTNER_PORT" --log "$DATA/partner.jsonl" > "$DATA/partner.out" 2>&1 &
PARTNER_PID=$!
# The host's own log (and the guests' records) go to a file, so that the
# commands' output below stays readable; guest records are shown apart.
echo "==> cairn serve --data $DATA --listen 127.0.0.1:$PORT --allow-http $PARTNER 2> $DATA/serve.log" >&2
"$CAIRN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --allow-http "$PARTNER" 2>"$DATA/serve.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; kill $PARTNER_PID 2>/dev/null; wait $PARTNER_PID 2>/dev/null' EXIT
for _ in $(seq 1 100); do "$CAIRN" definitions >/dev/null 2>&1 && break; sleep 0.1; done

# quote ARG: ARG as a shell word that can be pasted (single quotes when needed).
quote() {
    case "$1" in
        *[!A-Za-z0-9_./:=@%+,-]* | "") printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}
# explain TEXT: what the next commands show.
explain() { echo; echo "# $*"; }
# The guest log records written since the last call, apart from the output.
GUEST_SEEN=0
guest_lines() {
    local log="$DATA/guest-log.jsonl" total
    [ -f "$log" ] || return 0
    total=$(wc -l <"$log")
    if [ "$total" -gt "$GUEST_SEEN" ]; then
        echo "  ┆ guest log (DATA/guest-log.jsonl):"
        tail -n +"$((GUEST_SEEN + 1))" "$log" | head -n "$((total - GUEST_SEEN))" | sed -e 's/.*"at":"\([^"]*\)".*"message":"\([^"]*\)".*"source":"\([^"]*\)".*/  ┆   \3 at \1: \2/'
        GUEST_SEEN=$total
    fi
}
# step ARGS: prints `cairn ARGS` as it can be pasted, runs it, then the guest
# records it caused. (To paste: export PATH and CAIRN_SERVER as printed above.)
step() {
    local line="cairn" a
    for a in "$@"; do line="$line $(quote "$a")"; done
    echo; echo "\$ $line"
    "$CAIRN" "$@"
    sleep 0.2
    guest_lines
}
echo
echo "# To paste the commands below into another shell while the host runs:"
echo "#   export PATH=$(quote "$(dirname "$CAIRN")"):\$PATH CAIRN_SERVER=$CAIRN_SERVER"
explain "Deploy the example: two activity components (pricing; notifier, which may POST to the local partner) and the order-approval process."
step deploy "$WASM/pricing.wasm"
step deploy "$WASM/notifier.wasm" --allow-http "$PARTNER/notify"
step deploy "$WASM/order_approval.wasm"
step definitions
explain "Order A-100 is small: it creates an instance (correlated by order_id), is priced by the pricing activity, the quote comes back as the reply, and it is approved automatically and completes."
step send submit-order --body '{"order_id":"A-100","customer":"ada","lines":[{"sku":"widget","qty":4}]}' --wait-reply
explain "Order A-200 is above the approval limit: after its quote the instance waits, persisted and out of memory, for an approve message with the same order_id."
step send submit-order --body '{"order_id":"A-200","customer":"bob","lines":[{"sku":"gizmo","qty":3}]}' --wait-reply
explain "cairn show says what A-200's instance waits for: an approve message whose order_id is A-200 (its correlation), or its approval window's timer."
A200=$("$CAIRN" ls --process order-approval --status waiting --newest-first --limit 1 --json | sed -n 's/.*"id": "\(.*\)",/\1/p' | head -1)
step show "$A200"
explain "The approval finds A-200's instance by correlation (order_id), and the order is confirmed."
step send approve --body '{"order_id":"A-200","approved":true,"approver":"carol"}'
explain "Order A-300 waits for an approval for one second only: the durable timer fires, the order is rejected, and the notifier POSTs the rejection to the order's webhook (the local partner) with an Idempotency-Key."
step send submit-order --body '{"order_id":"A-300","customer":"eve","lines":[{"sku":"gadget","qty":20}],"approval_window_ms":1000,"webhook":"'"$PARTNER"'/notify/rejections"}' --wait-reply
echo; echo "(waiting for A-300's approval window to pass)"; sleep 1.5
guest_lines
explain "Every instance (stderr says how many of how many, and the command for the next page), then the last one in full: its variables and its history of persistence points, with their times."
step ls --process order-approval
LAST=$("$CAIRN" ls --process order-approval --newest-first --limit 1 --json | sed -n 's/.*"id": "\(.*\)",/\1/p' | head -1)
step show "$LAST"
explain "A typo gets a suggestion from the server (and exit code 1; 'cairn --help' lists the exit codes)."
step start order-aproval || true
echo; echo "==> what the partner received (the notifier's POST, with the host's Idempotency-Key):"
cat "$DATA/partner.out"
if [ "$KEEP" = 1 ]; then
    # An order that waits for approval for an hour, to look at in the console.
    step send submit-order --body '{"order_id":"A-400","customer":"dan","lines":[{"sku":"gizmo","qty":5}],"approval_window_ms":3600000}' --wait-reply
    echo
    echo "==> the host keeps running: open the web console at $CAIRN_SERVER/"
    echo "    (A-400 waits for approval: cairn send approve --body '{\"order_id\":\"A-400\",\"approved\":true,\"approver\":\"you\"}')"
    echo "    Ctrl-C stops the host and the partner."
    wait $SERVER || true
    exit 0
fi
echo; echo "==> stopping the host (SIGTERM: a controlled shutdown)" >&2
