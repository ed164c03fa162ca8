#!/usr/bin/env python3
"""The memory attack of issue 21 against a running binary at the shipped defaults: 100 senders each
start a frame and push up to 15 MiB of it without ending it, while a legitimate sender sends a
small message every 0.5 s on its own connection. Prints idle and peak RSS, the worst
legitimate ack time and the budget metrics. Usage: python3 benches/stall_attack.py PATH/TO/mllp-guard"""
import socket, subprocess, threading, time, sys, os, re
BIN=sys.argv[1]
def free():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
sinkp=subprocess.Popen([BIN,"sink","--listen","127.0.0.1:0"],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL)
sink=sinkp.stdout.readline().decode().split()[-1]
lp=free(); ap=free()
import tempfile; cfg=os.path.join(tempfile.mkdtemp(),"g.yaml"); open(cfg,"w").write(f"admin:\n  listen: 127.0.0.1:{ap}\nroutes:\n  - name: lab\n    listen: 127.0.0.1:{lp}\n    allow: [127.0.0.0/8]\n    upstream:\n      address: {sink}\n")
g=subprocess.Popen([BIN,"run","--config",cfg],stderr=subprocess.DEVNULL)
time.sleep(1.5)
def rss(): 
    return int(re.search(r"VmRSS:\s+(\d+)",open(f"/proc/{g.pid}/status").read()).group(1))//1024
print("idle RSS MiB",rss())
stop=False; pushed=[0]*100
def stall(i):
    s=socket.create_connection(("127.0.0.1",lp)); s.settimeout(0.5)
    s.sendall(b"\x0b")
    chunk=b"A"*65536; n=0
    t0=time.time()
    while n<15*1024*1024 and not stop and time.time()-t0<25:
        try: n+=s.send(chunk)
        except socket.timeout: pass
        except OSError: break
    pushed[i]=n
    while not stop: time.sleep(0.2)
    s.close()
ts=[threading.Thread(target=stall,args=(i,)) for i in range(100)]
[t.start() for t in ts]
c=socket.create_connection(("127.0.0.1",lp)); c.settimeout(10)
worst=0; peak=0
for i in range(40):
    msg=f"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|L{i}|P|2.5\rPID|1\r".encode()
    t=time.time(); c.sendall(b"\x0b"+msg+b"\x1c\r"); d=c.recv(4096); worst=max(worst,time.time()-t)
    assert b"MSA|AA|L%d"%i in d, d
    peak=max(peak,rss()); time.sleep(0.5)
print("pushed MiB total", sum(pushed)//2**20, "peak RSS MiB", peak, "worst legit ack s %.3f"%worst)
m=subprocess.run(["curl","-s",f"http://127.0.0.1:{ap}/metrics"],capture_output=True,text=True).stdout
print([l for l in m.splitlines() if "buffer" in l and not l.startswith("#")])
stop=True; [t.join() for t in ts]
g.terminate(); sinkp.terminate()
