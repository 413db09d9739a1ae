import socket, time, sys
n = int(sys.argv[1]); socks = []
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", 29100)); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /fw HTTP/1.1\r\nHost: att\r\n\r\n"); socks.append(s)
    except Exception as e:
        print("connect fail", i, e); break
    if i % 20 == 19: time.sleep(0.05)
print("opened", len(socks), flush=True)
time.sleep(float(sys.argv[2]))
