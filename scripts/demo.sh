#!/usr/bin/env bash
# The main job: build, start the host on an embedded data directory, deploy
# the order-approval example with its activities, and run orders to the end.
cd "$(dirname "$0")/.."
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
echo "==> cairn serve --data $DATA --listen 127.0.0.1:$PORT --allow-http $PARTNER" >&2
"$CAIRN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --allow-http "$PARTNER" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; kill $PARTNER_PID 2>/dev/null; wait $PARTNER_PID 2>/dev/null' EXIT
for _ in $(seq 1 100); do "$CAIRN" definitions >/dev/null 2>&1 && break; sleep 0.1; done

step() { echo; echo "\$ cairn $*"; "$CAIRN" "$@"; }
step deploy "$WASM/pricing.wasm"
step deploy "$WASM/notifier.wasm" --allow-http "$PARTNER/notify"
step deploy "$WASM/order_approval.wasm"
step definitions
step send submit-order --body '{"order_id":"A-100","customer":"ada","lines":[{"sku":"widget","qty":4}]}' --wait-reply
step send submit-order --body '{"order_id":"A-200","customer":"bob","lines":[{"sku":"gizmo","qty":3}]}' --wait-reply
step send approve --body '{"order_id":"A-200","approved":true,"approver":"carol"}'
step send submit-order --body '{"order_id":"A-300","customer":"eve","lines":[{"sku":"gadget","qty":20}],"approval_window_ms":1000,"webhook":"'"$PARTNER"'/notify/rejections"}' --wait-reply
echo; echo "(waiting for A-300's approval window to pass)"; sleep 1.5
step ls --process order-approval
LAST=$("$CAIRN" ls --process order-approval --json | sed -n 's/.*"id": "\(.*\)",/\1/p' | tail -1)
step show "$LAST"
echo; echo "==> what the partner received (the notifier's POST, with the host's Idempotency-Key):"
cat "$DATA/partner.out"
echo; echo "==> stopping the host (SIGTERM: a controlled shutdown)" >&2
