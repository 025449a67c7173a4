#!/usr/bin/env python3
"""The failover drill's client side, standard library only (python3 >= 3.7).

  serve ADDR PORT ID
      HTTP server (threaded) answering every GET with body "ID\\n" and header
      X-Node: ID; the node's tag. Bind ADDR may be a VIP not held yet
      (ip_nonlocal_bind=1).
  probe --vip V --port P --out LOG --kill-file F [--interval-ms 20]
        [--timeout-ms 200] [--max-s 30] [--after-s 12] [--hold-s 1]
        [--tag-header NAME]
      A new TCP connection and `GET /` every interval (start to start), each
      bounded by timeout; one line per probe: "START END OK TAG" (epoch
      seconds; TAG = the answering node: header NAME if given and present,
      else the body's first line; the exception's name on a failure).
      Stops at --max-s, or --after-s after the kill (F holds the kill's epoch
      once the drill has killed), or once the kill has disturbed the client
      (a failed probe, or a node other than the one before answers) and then
      --hold-s of successive successes followed.
  analyze --log LOG --kill-file F --vip V [--pcap P] [--mac NODE=MAC ...]
        [--garp-window S] [--profile N --advert-int S --scenario X --kill K --extra K=V ...]
        [--jsonl FILE]
      One kill's figures (see `kill_figures`) appended to FILE as a JSON
      line; prints them as one human line.
  report --in JSONL --json OUT.json --md OUT.md --meta META.json
      Per-profile summary (p50/max) from the per-kill objects; writes the
      JSON, appends the Markdown to OUT.md and prints it.
"""
import argparse
import json
import os
import socket
import statistics
import struct
import sys
import time


def serve(args):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = (args.id + "\n").encode()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Node", args.id)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer((args.addr, args.port), H).serve_forever()


def probe_once(vip, port, timeout, tag_header):
    t0 = time.time()
    try:
        s = socket.create_connection((vip, port), timeout=timeout)
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            data = b""
            while len(data) < 65536:
                left = timeout - (time.time() - t0)
                if left <= 0:
                    raise socket.timeout("timed out")
                s.settimeout(left)
                c = s.recv(4096)
                if not c:
                    break
                data += c
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.") or " 200" not in lines[0]:
            return 0, "status"
        tag = None
        if tag_header:
            for l in lines[1:]:
                k, _, v = l.partition(":")
                if k.strip().lower() == tag_header.lower():
                    tag = v.strip()
        if not tag:
            tag = body.decode("latin-1").strip().split("\n")[0].strip()
        return 1, (tag.replace(" ", "_") or "-")
    except Exception as e:  # a failed probe: its kind is the tag
        return 0, type(e).__name__


def read_kill(path):
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def probe(args):
    timeout = args.timeout_ms / 1000.0
    interval = args.interval_ms / 1000.0
    start = time.time()
    kill = None
    before = None          # last node that answered before the kill
    disturbed = False
    ok_since = None        # start of the current run of successes after disturbance
    with open(args.out, "w", buffering=1) as f:
        while time.time() - start < args.max_s:            # bounded by --max-s
            t = time.time()
            ok, tag = probe_once(args.vip, args.port, timeout, args.tag_header)
            e = time.time()
            f.write(f"{t:.6f} {e:.6f} {ok} {tag}\n")
            if kill is None:
                kill = read_kill(args.kill_file)
            if kill is None or e < kill:
                if ok:
                    before = tag
            else:
                if not ok or (before is not None and tag != before):
                    disturbed = True
                if disturbed:
                    if ok:
                        ok_since = t if ok_since is None else ok_since
                        if e - ok_since >= args.hold_s:
                            break
                    else:
                        ok_since = None
                if e - kill >= args.after_s:
                    break
            sl = interval - (time.time() - t)
            if sl > 0:
                time.sleep(sl)


def pcap_arps(path, vip):
    """(epoch, sender MAC, op) of every gratuitous ARP for vip (sender IP = target IP = vip)."""
    out = []
    try:
        data = open(path, "rb").read()
    except OSError:
        return None
    if len(data) < 24:
        return out
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        end = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        end = ">"
    else:
        return out
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    vipb = socket.inet_aton(vip)
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(end + "IIII", data[off:off + 16])
        off += 16
        fr = data[off:off + incl]
        off += incl
        if len(fr) < 42 or fr[12:14] != b"\x08\x06":
            continue
        op = struct.unpack(">H", fr[20:22])[0]
        sha, spa, tpa = fr[22:28], fr[28:32], fr[38:42]
        if spa == vipb and tpa == vipb:
            ts = sec + frac / (1e9 if nano else 1e6)
            out.append((ts, ":".join(f"{b:02x}" for b in sha), op))
    return out


def kill_figures(rows, kill, arps, macs, window=None):
    """rows: (start, end, ok, tag). Probes that ended after the kill are 'after'.
    outage_ms: start of the first failed probe after the kill to the start of
      the first successful one after it (0 with no failed probe).
    kill_to_ok_ms: kill to the start of that first success (with no failed
      probe: to the first answer from a node other than the one before).
    switch_ms: kill to the first answer from a node other than `before`.
    changes: how often the answering node changed after the kill (1: moved
      once and stayed)."""
    after = [r for r in rows if r[1] >= kill]
    pre = [r for r in rows if r[1] < kill and r[2] == 1]
    before = pre[-1][3] if pre else None
    ff = next((r for r in after if r[2] == 0), None)
    fs = next((r for r in after if ff and r[0] > ff[0] and r[2] == 1), None)
    sw = next((r for r in after if r[2] == 1 and before and r[3] != before), None)
    okafter = [r for r in after if r[2] == 1]
    res = {
        "before": before,
        "after": okafter[-1][3] if okafter else None,
        "first_after": (fs or sw or (okafter[0] if okafter else None) or (None,) * 4)[3],
        "changes": sum(1 for x, y in zip([before] + [r[3] for r in okafter], [r[3] for r in okafter])
                       if x is not None and x != y),
        "probes": len(rows),
        "probes_after_kill": len(after),
        "failed_probes": sum(1 for r in after if r[2] == 0),
        "first_fail_ms": round((ff[0] - kill) * 1000, 1) if ff else None,
        "switch_ms": round((sw[0] - kill) * 1000, 1) if sw else None,
    }
    if ff:
        res["outage_ms"] = round((fs[0] - ff[0]) * 1000, 1) if fs else None
        res["kill_to_ok_ms"] = round((fs[0] - kill) * 1000, 1) if fs else None
        res["recovered"] = fs is not None
    else:
        res["outage_ms"] = 0.0
        res["kill_to_ok_ms"] = res["switch_ms"]
        res["recovered"] = bool(okafter)
    if arps is None:
        res["garps"] = None            # not captured
        res["garp_first_ms"] = None
        res["garp_from"] = None
    else:
        g = [a for a in arps if a[0] >= kill and (window is None or a[0] <= kill + window)]
        who = {v: k for k, v in macs.items()}
        res["garps"] = len(g)
        res["garp_first_ms"] = round((g[0][0] - kill) * 1000, 1) if g else None
        res["garp_from"] = sorted({who.get(a[1], a[1]) for a in g})
    return res


def analyze(args):
    rows = []
    with open(args.log) as f:
        for l in f:
            p = l.split()
            if len(p) == 4:
                rows.append((float(p[0]), float(p[1]), int(p[2]), p[3]))
    kill = read_kill(args.kill_file)
    if kill is None:
        print(json.dumps({"error": "no kill time"}))
        return
    arps = pcap_arps(args.pcap, args.vip) if args.pcap else None
    macs = dict(m.split("=", 1) for m in (args.mac or []))
    res = {"profile": args.profile, "advert_int": args.advert_int, "scenario": args.scenario,
           "kill": args.kill}
    res.update(kill_figures(rows, kill, arps, macs, args.garp_window))
    res["garp_window_s"] = args.garp_window
    res["kill_epoch"] = kill
    for x in args.extra or []:
        k, _, v = x.partition("=")
        try:
            res[k] = float(v)
        except ValueError:
            res[k] = v
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(res) + "\n")
    g = "GARPs not captured" if res["garps"] is None else \
        f"GARPs {res['garps']}" + (f" (first +{res['garp_first_ms']:.0f} ms from {','.join(res['garp_from'])})"
                                   if res["garp_first_ms"] is not None else "")
    print(f"{args.profile} advert_int={args.advert_int} {args.scenario} kill {args.kill}: "
          f"outage {fmt(res['outage_ms'], ' ms')}, kill->first ok {fmt(res['kill_to_ok_ms'], ' ms')}, "
          f"{res['before']} -> {res['after']} ({res['changes']} change(s)), failed probes {res['failed_probes']}, {g}"
          + "".join(f", {x}" for x in args.extra or []))


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}{unit}"
    return f"{v}{unit}"


def summary(kills):
    def stat(key):
        v = [k[key] for k in kills if k.get(key) is not None]
        if not v:
            return {"p50": None, "max": None, "min": None, "n": 0}
        return {"p50": round(statistics.median(v), 1), "max": max(v), "min": min(v), "n": len(v)}

    g = [k["garps"] for k in kills if k.get("garps") is not None]
    return {
        "kills": len(kills),
        "recovered": sum(1 for k in kills if k.get("recovered")),
        "outage_ms": stat("outage_ms"),
        "kill_to_ok_ms": stat("kill_to_ok_ms"),
        "garp_first_ms": stat("garp_first_ms"),
        "failed_probes": stat("failed_probes"),
        "garps_total": sum(g) if len(g) == len(kills) and kills else None,
        "garps_per_kill": stat("garps") if len(g) == len(kills) and kills else None,
        "moved": sum(1 for k in kills if k.get("before") and k.get("first_after")
                     and k["before"] != k["first_after"]),
    }


def report(args):
    meta = json.load(open(args.meta))
    recs = [json.loads(l) for l in open(args.in_) if l.strip()]
    groups = {}
    for r in recs:
        groups.setdefault((r["profile"], r["advert_int"], r["scenario"]), []).append(r)
    profiles = []
    for (name, adv, scen), ks in groups.items():
        profiles.append({"profile": name, "advert_int": adv, "scenario": scen,
                         "summary": summary(ks), "kills": ks})
    out = dict(meta)
    out["profiles"] = profiles
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")

    cap = meta.get("garp_capture")
    md = [f"## keepalived failover drill, {meta['date']}", "",
          f"{meta['keepalived']}, kernel {meta['kernel']}, {meta['nproc']} CPUs (load avg {meta['loadavg']}); "
          f"topology benches/netns-pair.sh (`{meta['prefix']}-*`, VIP {meta['vip']}); "
          f"probe: new TCP connection + GET every {meta['interval_ms']} ms, {meta['timeout_ms']} ms timeout; "
          f"GARP capture: {cap}, GARPs counted {meta.get('garp_window')}; the client probes over the same window.", "",
          "| profile | advert_int | scenario | kills | outage p50 | outage max | kill→first ok p50 | kill→first ok max "
          "| first GARP p50 | GARPs seen (total, per kill) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        s = p["summary"]
        gp = s["garps_per_kill"]
        garps = "not captured" if s["garps_total"] is None else \
            f"{s['garps_total']} ({fmt(gp['min'])}–{fmt(gp['max'])})"
        md.append(f"| {p['profile']} | {p['advert_int']} s | {p['scenario']} | {s['recovered']}/{s['kills']} "
                  f"| {fmt(s['outage_ms']['p50'], ' ms')} | {fmt(s['outage_ms']['max'], ' ms')} "
                  f"| {fmt(s['kill_to_ok_ms']['p50'], ' ms')} | {fmt(s['kill_to_ok_ms']['max'], ' ms')} "
                  f"| {fmt(s['garp_first_ms']['p50'], ' ms')} | {garps} |")
    for p in profiles:
        md += ["", f"### {p['profile']} (advert_int {p['advert_int']} s), scenario {p['scenario']}", "",
               "| kill | outage | kill→first ok | first failed probe | failed probes | before → after (changes) | GARPs | first GARP (from) |",
               "|---|---|---|---|---|---|---|---|"]
        for k in p["kills"]:
            g = "not captured" if k.get("garps") is None else str(k["garps"])
            gf = "-" if k.get("garp_first_ms") is None else \
                f"+{k['garp_first_ms']:.0f} ms ({','.join(k.get('garp_from') or [])})"
            md.append(f"| {k['kill']} | {fmt(k.get('outage_ms'), ' ms')} | {fmt(k.get('kill_to_ok_ms'), ' ms')} "
                      f"| {('+' + fmt(k['first_fail_ms'], ' ms')) if k.get('first_fail_ms') is not None else '-'} "
                      f"| {k.get('failed_probes')} | {k.get('before')} → {k.get('after')} ({k.get('changes')}) | {g} | {gf} |")
        s = p["summary"]
        md.append(f"| **p50 / max** | **{fmt(s['outage_ms']['p50'])} / {fmt(s['outage_ms']['max'])} ms** "
                  f"| {fmt(s['kill_to_ok_ms']['p50'])} / {fmt(s['kill_to_ok_ms']['max'])} ms | | "
                  f"{fmt(s['failed_probes']['p50'])} / {fmt(s['failed_probes']['max'])} | moved {s['moved']}/{s['kills']} "
                  f"| {'-' if s['garps_total'] is None else s['garps_total']} | {fmt(s['garp_first_ms']['p50'], ' ms')} |")
    md += ["", "Outage: start of the first failed probe after the kill to the start of the first successful one "
           "after it. kill→first ok: the kill to that success; with no failed probe (crash: the dead master's "
           "VIP still answers), to the first answer from the other node. GARPs: ARP frames with sender IP = "
           "target IP = VIP seen by the client in the window."]
    text = "\n".join(md) + "\n"
    with open(args.md, "a") as f:
        f.write(text + "\n")
    sys.stdout.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    s.add_argument("id")
    p = sub.add_parser("probe")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kill-file", required=True)
    p.add_argument("--interval-ms", type=float, default=20)
    p.add_argument("--timeout-ms", type=float, default=200)
    p.add_argument("--max-s", type=float, default=30)
    p.add_argument("--after-s", type=float, default=12)
    p.add_argument("--hold-s", type=float, default=1.0)
    p.add_argument("--tag-header")
    a = sub.add_parser("analyze")
    a.add_argument("--log", required=True)
    a.add_argument("--kill-file", required=True)
    a.add_argument("--vip", required=True)
    a.add_argument("--pcap")
    a.add_argument("--mac", action="append")
    a.add_argument("--garp-window", type=float, help="count GARPs up to this many seconds after the kill")
    a.add_argument("--profile", default="-")
    a.add_argument("--advert-int", type=float)
    a.add_argument("--scenario", default="-")
    a.add_argument("--kill", type=int, default=0)
    a.add_argument("--extra", action="append", help="KEY=VALUE added to the record")
    a.add_argument("--jsonl", help="append the record to this file")
    r = sub.add_parser("report")
    r.add_argument("--in", dest="in_", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--md", required=True)
    r.add_argument("--meta", required=True)
    args = ap.parse_args()
    {"serve": serve, "probe": probe, "analyze": analyze, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
