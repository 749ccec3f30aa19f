#!/usr/bin/env python3
"""Chat with Steward over its WebSocket: several turns on one socket, one after another.

    pip install websockets
    python3 docs/ws-chat.py ws://127.0.0.1:8080 "$KEY" "Name a colour." "Write a long story." --cancel-after 5

The key travels as the `steward.key.<key>` subprotocol, as a browser would send it. Each
message is one turn in the same session; with --cancel-after N, a turn is cancelled once it
has streamed N deltas (the server answers `done` with finish_reason `cancelled`).
"""
import argparse
import asyncio
import json

import websockets


async def chat(url, key, messages, cancel_after):
    async with websockets.connect(f"{url}/v1/chat/stream", subprotocols=["steward.v1", f"steward.key.{key}"]) as socket:
        session_id = None
        for message in messages:
            turn = {"type": "turn", "message": message, "max_tokens": 200}
            if session_id:
                turn["session_id"] = session_id
            await socket.send(json.dumps(turn))
            deltas = 0
            while True:
                frame = json.loads(await socket.recv())
                kind = frame["type"]
                if kind == "session":
                    session_id = frame["session_id"]
                    print(f"\n[turn {frame['turn_id']} verdict {frame['policy_verdict']}]")
                elif kind == "delta":
                    print(frame["content"], end="", flush=True)
                    deltas += 1
                    if cancel_after and deltas == cancel_after:
                        await socket.send(json.dumps({"type": "cancel", "turn_id": frame["turn_id"]}))
                elif kind in ("refusal", "error"):
                    print(f"\n[{kind}: {frame.get('code')} {frame.get('message')}]")
                    if kind == "error" and not frame.get("turn_id"):
                        break
                elif kind == "done":
                    print(f"\n[done: {frame['finish_reason']}]")
                    break


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="ws://host:port")
    parser.add_argument("key")
    parser.add_argument("messages", nargs="+")
    parser.add_argument("--cancel-after", type=int, default=0, help="cancel each turn after this many deltas")
    args = parser.parse_args()
    asyncio.run(chat(args.url, args.key, args.messages, args.cancel_after))


if __name__ == "__main__":
    main()
