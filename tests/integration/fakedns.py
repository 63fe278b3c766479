"""An upstream resolver for tests: `fakedns.py ADDRESS` answers every A query with 192.0.2.7."""
import socket
import sys

import dns.message
import dns.rrset

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    query = dns.message.from_wire(data)
    reply = dns.message.make_response(query)
    q = query.question[0]
    reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", "192.0.2.7"))
    s.sendto(reply.to_wire(), peer)
