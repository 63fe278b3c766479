"""An upstream resolver for tests: `fakedns.py ADDRESS [--silent SUFFIX] [--log]` answers every A query
with 192.0.2.7, but never names ending in SUFFIX; --log prints "<source port> <name>" per query."""
import socket
import sys

import dns.message
import dns.rrset

args = sys.argv[1:]
silent = args[args.index("--silent") + 1] if "--silent" in args else None
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE (root): a test's flood arrives at once
s.bind((args[0], 53))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    query = dns.message.from_wire(data)
    q = query.question[0]
    name = q.name.to_text(omit_final_dot=True)
    if "--log" in args:
        print(peer[1], name, flush=True)
    if silent and name.endswith(silent):
        continue
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", "192.0.2.7"))
    s.sendto(reply.to_wire(), peer)
