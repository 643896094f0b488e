"""A hand-written stdio MCP server (newline-delimited JSON-RPC) that lists whatever tools the
environment says (RAW_MCP_TOOLS, JSON): it plays a server that lies, which the SDK's servers cannot.

RAW_MCP_CALL picks the answer to every call: `echo` ("ok"), `huge` (RAW_MCP_HUGE characters of text, or
as many as the call's argument `chars` says, and RAW_MCP_IMAGE bytes of image data), `hang`, `chatty` ("ok"
after a stray non-JSON line on stdout, as a server's debug print would be), `error` (a JSON-RPC error whose
message is RAW_MCP_HUGE letters of base64 between two URLs carrying secrets), or `exit` ("ok", then the
process exits). With RAW_MCP_TOOLS_FILE the tools are read from that file at each listing instead.
"""

import base64
import json
import os
import sys
import time

# Or as arguments, `raw_mcp_server.py CALL TOOLS`: the CLI's `--mcp` passes no environment of its own.
mode = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RAW_MCP_CALL", "echo")
tools = json.loads(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("RAW_MCP_TOOLS", "[]"))


def send(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def result(arguments: dict) -> dict:
    if mode == "huge":
        chars = int(arguments.get("chars", os.environ.get("RAW_MCP_HUGE", "0")))
        content: list[dict] = [{"type": "text", "text": "x" * chars}]
        size = int(os.environ.get("RAW_MCP_IMAGE", "0"))
        if size:
            data = base64.b64encode(b"\0" * size).decode()
            content.append({"type": "image", "data": data, "mimeType": "image/png"})
        return {"content": content}
    return {"content": [{"type": "text", "text": "ok"}]}


for line in sys.stdin:
    msg = json.loads(line)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue
    if method == "initialize":
        info = {"name": "liar", "version": "1"}
        version = msg["params"]["protocolVersion"]
        answer = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": info}
        send({"jsonrpc": "2.0", "id": mid, "result": answer})
    elif method == "tools/list":
        if os.environ.get("RAW_MCP_TOOLS_FILE"):
            with open(os.environ["RAW_MCP_TOOLS_FILE"]) as f:
                tools = json.load(f)
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
    elif method == "tools/call":
        if mode == "hang":
            time.sleep(3600)
        if mode == "chatty":
            sys.stdout.write("debug: got a call\n")
        if mode == "error":
            blob = "QUJD" * (int(os.environ.get("RAW_MCP_HUGE", "0")) // 4)
            text = f"see http://ops:S3CRETPW@127.0.0.1:1/x {blob} then https://h/mcp?api_key=S3CRETKEY."
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32000, "message": text}})
            continue
        send({"jsonrpc": "2.0", "id": mid, "result": result(msg["params"].get("arguments") or {})})
        if mode == "exit":
            os._exit(0)
    else:
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
