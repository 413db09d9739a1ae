#!/usr/bin/env python3
"""Validates deploy/kubernetes/*.yaml offline: every resource against the
Kubernetes OpenAPI schemas that kubernetes-validate bundles (strict: unknown
fields are errors), then what a schema cannot see: duplicate YAML keys, the
ConfigMap's tenants.toml parsing, selectors and names that must agree, and
the Deployment's tenants checksum; and deploy/spin/spin.toml and
deploy/spinkube/ (a CRD the schemas do not cover) for their key fields.
Installs kubernetes-validate into
target/pydeps-k8s on first use. Exits non-zero on any problem.

Usage: validate-manifests.py [DIR]   (default: deploy/kubernetes)"""

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
DEPS = ROOT / "target" / "pydeps-k8s"
PACKAGE = "kubernetes-validate==1.37.0"
# The newest the package knows, and an older one still common in clusters.
VERSIONS = ("1.37.0", "1.30.0")
CHECKSUM = "rsgi-wasm/tenants-sha256"


def load_validator():
    # The pinned version's dist-info is written last: its absence also means
    # an install that was cut short.
    name, version = PACKAGE.split("==")
    if not (DEPS / f"{name.replace('-', '_')}-{version}.dist-info").is_dir():
        print(f"installing {PACKAGE} into {show(DEPS)}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--upgrade", "--target", str(DEPS), PACKAGE],
            check=True,
            env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"},
        )
    sys.path.insert(0, str(DEPS))
    import kubernetes_validate.utils as kv
    import yaml
    return kv, yaml


def unique_key_loader(yaml):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last)."""

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def cross_checks(resources, where):
    """Errors a per-resource schema cannot catch."""
    errors = []
    by_kind = {}
    for _, r in resources:
        by_kind.setdefault(r["kind"], {})[r["metadata"]["name"]] = r
    configmaps = by_kind.get("ConfigMap", {})
    for name, cm in configmaps.items():
        for key, text in cm.get("data", {}).items():
            if key.endswith(".toml"):
                try:
                    tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    errors.append(f"configmap/{name}: {key}: {e}")
    deployments = by_kind.get("Deployment", {})
    for name, dep in deployments.items():
        spec = dep["spec"]
        pod = spec["template"]
        labels = pod["metadata"].get("labels", {})
        if not _matches(spec["selector"], labels):
            errors.append(f"deployment/{name}: selector does not match the pod labels")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in pod["spec"]["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    errors.append(f"deployment/{name}: mount {m['name']} has no volume")
        for v in volumes.values():
            ref = v.get("configMap", {}).get("name")
            if ref is None:
                continue
            if ref not in configmaps:
                errors.append(f"deployment/{name}: no ConfigMap {ref} in {where}/")
                continue
            text = configmaps[ref].get("data", {}).get("tenants.toml")
            if text is None:
                continue
            want = hashlib.sha256(text.encode()).hexdigest()
            have = pod["metadata"].get("annotations", {}).get(CHECKSUM)
            if have != want:
                errors.append(
                    f"deployment/{name}: annotation {CHECKSUM} is {have!r} but "
                    f"configmap/{ref}'s tenants.toml hashes to {want}: set it so "
                    f"the change rolls out")
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for name, r in by_kind.get(kind, {}).items():
            sel = r["spec"].get("podSelector" if kind == "NetworkPolicy" else "selector", {})
            if kind == "Service":
                sel = {"matchLabels": sel}
            if not any(_matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))
                       for d in deployments.values()):
                errors.append(f"{kind.lower()}/{name}: selector matches no Deployment's pods")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] == "Deployment" and target["name"] not in deployments:
            errors.append(f"horizontalpodautoscaler/{name}: no Deployment {target['name']}")
    return errors


# SpinApp's spec fields (SpinKube's core.spinkube.dev/v1alpha1 CRD): the
# CRD is not in kubernetes-validate's schemas, so these are checked here.
SPINAPP_SPEC = {
    "image", "imagePullSecrets", "executor", "replicas", "enableAutoscaling",
    "resources", "volumes", "volumeMounts", "variables", "checks",
    "deploymentAnnotations", "podAnnotations", "podLabels", "serviceAnnotations",
    "runtimeConfig", "components", "deploymentLabels", "serviceLabels",
}


def wasi_http_hosts(yaml, loader):
    """deploy/spin/spin.toml and deploy/spinkube/*.yaml: parsed, and the
    fields that tie them to what `rsgi-wasm unpack` prints."""
    errors = []
    spin = ROOT / "deploy" / "spin" / "spin.toml"
    try:
        m = tomllib.loads(spin.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"{show(spin)}: {e}"]
    if m.get("spin_manifest_version") != 2:
        errors.append(f"{show(spin)}: spin_manifest_version must be 2")
    components = m.get("component", {})
    for t in m.get("trigger", {}).get("http", []):
        if t.get("component") not in components:
            errors.append(f"{show(spin)}: trigger route {t.get('route')!r} names no [component]")
    for name, c in components.items():
        if not str(c.get("source", "")).endswith(".wasm"):
            errors.append(f"{show(spin)}: component.{name}.source is not a .wasm")
        dests = [f.get("destination") for f in c.get("files", [])]
        for want in ("/python", "/1"):
            if want not in dests:
                errors.append(f"{show(spin)}: component.{name}.files maps nothing to {want} "
                              f"(the paths `rsgi-wasm unpack` prints)")
    for path in sorted((ROOT / "deploy" / "spinkube").glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if not doc:
                continue
            if (doc.get("apiVersion"), doc.get("kind")) != ("core.spinkube.dev/v1alpha1", "SpinApp"):
                errors.append(f"{show(path)}: expected a core.spinkube.dev/v1alpha1 SpinApp")
                continue
            spec = doc.get("spec", {})
            unknown = set(spec) - SPINAPP_SPEC
            if unknown:
                errors.append(f"{show(path)}: unknown SpinApp spec fields {sorted(unknown)}")
            if not spec.get("image") or not spec.get("executor"):
                errors.append(f"{show(path)}: a SpinApp needs spec.image and spec.executor")
    return errors


def show(path):
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _matches(selector, labels):
    want = selector.get("matchLabels", {})
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def main():
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    manifests = Path(sys.argv[1]).resolve() if len(sys.argv) == 2 else MANIFESTS
    where = show(manifests)
    kv, yaml = load_validator()
    loader = unique_key_loader(yaml)
    files = sorted(manifests.glob("*.yaml")) + sorted(manifests.glob("*.yml"))
    if not files:
        sys.exit(f"error: no manifests in {where}/")
    errors = []
    resources = []
    for path in files:
        rel = show(path)
        try:
            docs = [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]
        except yaml.YAMLError as e:
            errors.append(f"{rel}: {e}")
            continue
        for doc in docs:
            what = f"{rel}: {doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"
            for version in VERSIONS:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    at = ".".join(str(p) for p in e.path) or "(top)"
                    errors.append(f"{what}: Kubernetes {version}: {at}: {e.message}")
                except (kv.SchemaNotFoundError, kv.InvalidSchemaError,
                        kv.VersionNotSupportedError) as e:
                    # The CLI only warns here; an unknown kind or apiVersion
                    # is an error for us.
                    errors.append(f"{what}: Kubernetes {version}: {getattr(e, 'message', e)}")
            resources.append((rel, doc))
    if not errors:
        errors = cross_checks(resources, where)
    if manifests == MANIFESTS:
        errors += wasi_http_hosts(yaml, loader)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(f"{len(errors)} problem(s) in {where}/")
    from kubernetes_validate.version import __version__
    print(f"{len(resources)} manifests in {where}/ valid "
          f"(kubernetes-validate {__version__}, strict, Kubernetes "
          f"{' and '.join(VERSIONS)})")


if __name__ == "__main__":
    main()
