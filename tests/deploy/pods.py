#!/usr/bin/env python3
"""Runs the relay as the Kubernetes manifests and deploy/compose.yaml run it, with exactly
the files they mount and nothing else, as the user they run as.

Each container gets its own mount namespace: /etc, /var and /run are overlays on a tmpfs
(nothing reaches the host), and each volumeMount is a bind mount of a folder made from its
volume (ConfigMap keys as files, the Secret's documented keys, an empty claim shared by
every workload that names it). A scenario (Kubernetes, compose) shares one network
namespace with only loopback, so the manifests' own ports (2525, 9325) are used as they are.

Usage (root): python3 pods.py BIN REPO   (called by tests/deploy/check.sh)
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

# Keys of the Secret the manifests mount, as the docs tell the operator to create it.
SECRET_KEYS = {"dkim-relay": ["upstream-password"]}
# Files compose.yaml's `file:` sources may need, as its header comment documents them.
COMPOSE_FILES = {"secrets/upstream-password": "dummy-password\n"}

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def entrypoint(repo, binary):
    text = open(os.path.join(repo, "Dockerfile")).read()
    ep = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return [binary if a == "/usr/local/bin/dkim-relay" else a for a in ep], cmd


# ---- inside one container's mount namespace ------------------------------------------


def inner(spec_file):
    spec = json.load(open(spec_file))
    scratch = spec["scratch"]
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", scratch], check=True)
    for top in ("/etc", "/var", "/run"):
        up, work = scratch + top + "-up", scratch + top + "-work"
        os.makedirs(up)
        os.makedirs(work)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={top},upperdir={up},workdir={work}", top], check=True)
    for m in spec["mounts"]:
        target = m["target"]
        if os.path.isdir(m["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        subprocess.run(["mount", "--bind", m["source"], target], check=True)
        if m.get("readOnly"):
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    os.chdir(spec.get("workdir") or "/")
    uid, gid = spec["uid"], spec["gid"]
    groups = ",".join(str(g) for g in spec.get("groups", [gid]))
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={groups}"] + spec["cmd"]
    os.execvp(cmd[0], cmd)


# ---- the scenarios ---------------------------------------------------------------------


class Container:
    """One container of a workload: its mounts (source folder -> mountPath) and user."""

    def __init__(self, name, mounts, uid, gid, groups, workdir, args):
        self.name, self.mounts, self.uid, self.gid = name, mounts, uid, gid
        self.groups, self.workdir, self.args = groups, workdir, args

    def spec(self, tmp, cmd):
        scratch = tempfile.mkdtemp(dir=tmp, prefix="ns-")
        spec = {"scratch": scratch, "mounts": self.mounts, "uid": self.uid, "gid": self.gid,
                "groups": self.groups, "workdir": self.workdir, "cmd": cmd}
        path = scratch + ".json"
        json.dump(spec, open(path, "w"))
        return ["unshare", "--mount", "--propagation", "private",
                sys.executable, os.path.abspath(__file__), "--inner", path]

    def run(self, tmp, cmd, timeout=120):
        return subprocess.run(self.spec(tmp, cmd), capture_output=True, text=True, timeout=timeout)

    def start(self, tmp, cmd, log):
        return subprocess.Popen(self.spec(tmp, cmd), stdout=log, stderr=subprocess.STDOUT)


def write_files(folder, files, mode, uid=0, gid=0):
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return folder


def kubernetes_containers(repo, binary, tmp):
    """Every container of every workload, with its volumes made as the kubelet makes them."""
    docs = []
    for path in sorted(glob.glob(os.path.join(repo, "deploy/kubernetes/*.yaml"))):
        docs += [d for d in yaml.safe_load_all(open(path)) if d]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    ep, default_cmd = entrypoint(repo, binary)
    out = {}
    for d in docs:
        if d["kind"] == "StatefulSet":
            pod = d["spec"]["template"]["spec"]
            templates = [t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])]
        elif d["kind"] == "CronJob":
            pod = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            templates = []
        else:
            continue
        sc = pod.get("securityContext", {})
        uid, gid = sc.get("runAsUser", 0), sc.get("runAsGroup", 0)
        fs_group = sc.get("fsGroup")
        groups = [gid] + ([fs_group] if fs_group is not None else [])
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = []
            for m in c.get("volumeMounts", []):
                name = m["name"]
                v = volumes.get(name)
                if name in templates:
                    source = os.path.join(tmp, "claims", d["metadata"]["name"] + "-" + name + "-0")
                elif v and "persistentVolumeClaim" in v:
                    source = os.path.join(tmp, "claims", v["persistentVolumeClaim"]["claimName"])
                elif v and "configMap" in v:
                    data = configmaps[v["configMap"]["name"]]
                    source = write_files(os.path.join(tmp, "cm", v["configMap"]["name"]), data,
                                         0o644, 0, fs_group or 0)
                elif v and "secret" in v:
                    sname = v["secret"]["secretName"]
                    keys = {k: "dummy-password\n" for k in SECRET_KEYS.get(sname, [])}
                    source = write_files(os.path.join(tmp, "secret", sname), keys,
                                         v["secret"].get("defaultMode", 0o644), 0, fs_group or 0)
                else:
                    check(False, f"{d['metadata']['name']}/{c['name']}: volume {name} is not defined")
                    continue
                if not os.path.exists(source):
                    # A fresh volume: fsGroup owns it, setgid, group-writable.
                    os.makedirs(source)
                    os.chown(source, 0, fs_group or 0)
                    os.chmod(source, 0o2775)
                mounts.append({"source": source, "target": m["mountPath"],
                               "readOnly": bool(m.get("readOnly"))})
            args = c.get("args", default_cmd)
            out[(d["kind"], c["name"])] = (
                Container(c["name"], mounts, uid, gid, groups, "/var/lib/dkim-relay", args), ep)
    return out


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, body = http_get(url)
        if status is not None:
            return status, body
        time.sleep(0.2)
    return None, ""


def stop(proc):
    proc.terminate()
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def kubernetes(repo, binary, tmp):
    print("== kubernetes: the pods and the CronJob with exactly their mounts", flush=True)
    cs = kubernetes_containers(repo, binary, tmp)
    relay, ep = cs[("StatefulSet", "relay")]
    rotate, _ = cs[("CronJob", "rotate")]
    for what, c in (("StatefulSet relay", relay), ("CronJob rotate", rotate)):
        r = c.run(tmp, ep + ["config", "check"])
        check(r.returncode == 0, f"{what}: config check ({(r.stdout + r.stderr).strip()})")
    log = open(os.path.join(tmp, "relay.log"), "w+")
    proc = relay.start(tmp, ep + relay.args, log)
    status, body = wait_http("http://127.0.0.1:9325/readyz")
    check(status == 503 and "no active key for example.com" in body,
          f"StatefulSet relay: fresh deployment is unready with 'no active key for example.com' (got {status} {body.strip()!r})")
    r = rotate.run(tmp, ep + rotate.args)
    out = r.stdout + r.stderr
    check(r.returncode == 0, f"CronJob rotate: `{' '.join(rotate.args)}` exits 0 ({out.strip()[-300:]!r})")
    check("_domainkey.example.com" in r.stdout,
          "CronJob rotate: its first run generates the first keys and prints the records to publish")
    # DNS cannot serve example.com here: the operator's way past it, in the CronJob's
    # container (its mounts), then the pods reload the shared store and turn ready.
    r = rotate.run(tmp, ep + ["keys", "activate", "--force", "--domain", "example.com"])
    check(r.returncode == 0, f"CronJob rotate: keys activate --force ({(r.stdout + r.stderr).strip()[-300:]!r})")
    deadline = time.time() + 90
    status = None
    while time.time() < deadline:
        status, body = http_get("http://127.0.0.1:9325/readyz")
        if status == 200:
            break
        time.sleep(0.5)
    check(status == 200, f"StatefulSet relay: ready once the domain has an active key (got {status} {body.strip()!r})")
    rc = stop(proc)
    log.seek(0)
    text = log.read()
    check(rc == 0, f"StatefulSet relay: serve stops cleanly on SIGTERM (exit {rc}; log tail {text[-400:]!r})")


def compose(repo, binary, tmp):
    print("== compose: the service with exactly its mounts", flush=True)
    doc = yaml.safe_load(open(os.path.join(repo, "deploy/compose.yaml")))
    base = os.path.join(repo, "deploy")
    # The files the operator makes, as the header comment says; nothing else.
    checkout = os.path.join(tmp, "checkout")
    for rel, text in COMPOSE_FILES.items():
        path = os.path.join(checkout, rel)
        write_files(os.path.dirname(path), {os.path.basename(path): text}, 0o400, 10001, 10001)
    ep, default_cmd = entrypoint(repo, binary)
    for sname, svc in doc["services"].items():
        mounts = []
        for v in svc.get("volumes", []):
            src, target = v.split(":")[0], v.split(":")[1]
            if src in (doc.get("volumes") or {}):
                source = os.path.join(tmp, "compose-volumes", src)
                os.makedirs(source, exist_ok=True)
                os.chown(source, 10001, 10001)  # the image's folder, owned by dkim-relay
            else:
                source = os.path.normpath(os.path.join(base, src))
                source = source.replace(os.path.normpath(repo), checkout, 1)
                check(os.path.exists(source), f"compose {sname}: bind mount {src} exists")
            mounts.append({"source": source, "target": target, "readOnly": v.endswith(":ro")})
        for c in svc.get("configs", []):
            conf = doc["configs"][c["source"]]
            folder = os.path.join(tmp, "compose-configs", c["source"])
            write_files(folder, {"file": conf["content"]}, 0o444)
            mounts.append({"source": os.path.join(folder, "file"), "target": c["target"],
                           "readOnly": True})
        for s in svc.get("secrets", []):
            name = s if isinstance(s, str) else s["source"]
            src = doc["secrets"][name]["file"]
            source = os.path.normpath(os.path.join(base, src)).replace(os.path.normpath(repo), checkout, 1)
            ok = os.path.exists(source)
            check(ok, f"compose {sname}: secret {name} ({src}) is a file the comment tells the operator to make")
            if ok:
                mounts.append({"source": source, "target": f"/run/secrets/{name}", "readOnly": True})
        c = Container(sname, mounts, 10001, 10001, [10001], "/var/lib/dkim-relay",
                      svc.get("command", default_cmd))
        r = c.run(tmp, ep + ["config", "check"])
        check(r.returncode == 0, f"compose {sname}: config check ({(r.stdout + r.stderr).strip()})")
        log = open(os.path.join(tmp, "compose.log"), "w+")
        proc = c.start(tmp, ep + c.args, log)
        status, _ = wait_http("http://127.0.0.1:9325/healthz")
        check(status == 200, f"compose {sname}: serve answers /healthz (the image's HEALTHCHECK) (got {status})")
        rc = stop(proc)
        log.seek(0)
        check(rc == 0, f"compose {sname}: serve stops cleanly on SIGTERM (exit {rc}; {log.read()[-400:]!r})")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        return inner(sys.argv[2])
    if len(sys.argv) == 4 and sys.argv[1] == "--scenario":
        binary, repo = os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        tmp = tempfile.mkdtemp(prefix="dkim-relay-deploy-")
        os.chmod(tmp, 0o755)
        try:
            {"kubernetes": kubernetes, "compose": compose}[os.environ["SCENARIO"]](repo, binary, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(1 if failures else 0)
    binary, repo = sys.argv[1], sys.argv[2]
    rc = 0
    for scenario in ("kubernetes", "compose"):
        # Its own network namespace: only loopback, the manifests' ports as they are.
        r = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__),
                            "--scenario", binary, repo], env={**os.environ, "SCENARIO": scenario})
        rc = rc or r.returncode
    sys.exit(rc)


if __name__ == "__main__":
    main()
