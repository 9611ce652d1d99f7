"""Strict load of the Kubernetes manifests through the official client's models.

Every document in deploy/kubernetes/*.yaml (the kustomization aside) is read field by field
against the model of its apiVersion and kind in the `kubernetes` package (its models are generated
from the API server's OpenAPI schema): a field the model does not know (a misspelt key, or one in
the wrong place), a value of the wrong type or a missing required field fails, naming the path.
The kustomization must list every manifest and only those. Usage:

    python3 tools/k8s_strict.py deploy/kubernetes
"""

import json
import pathlib
import sys

import kubernetes.client
import yaml

PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
    "bytes": (str,),
}


def check(value, kind, path, problems):
    """Append to `problems` every way `value` does not fit the client type `kind`."""
    # The client writes container types as typing does (List[V1Container], Dict[str, str]);
    # older releases wrote list[...] and dict(str, ...): both are read.
    if kind.startswith(("List[", "list[")):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for index, item in enumerate(value):
            check(item, kind[5:-1], f"{path}[{index}]", problems)
        return
    if kind.startswith(("Dict[", "dict(")):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check(item, inner, f"{path}.{key}", problems)
        return
    if kind in PRIMITIVES:
        wanted = PRIMITIVES[kind]
        # YAML's booleans are ints to Python: a bool is not an acceptable int here.
        if not isinstance(value, wanted) or (kind in ("int", "float") and isinstance(value, bool)):
            problems.append(f"{path}: expected {kind}, got {value!r}")
        return
    model = getattr(kubernetes.client, kind)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {kind} object, got {value!r}")
        return
    by_json_name = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    for key, item in value.items():
        attribute = by_json_name.get(key)
        if attribute is None:
            problems.append(f"{path}.{key}: not a field of {kind}")
            continue
        check(item, model.openapi_types[attribute], f"{path}.{key}", problems)


def model_name(document):
    group_version = document.get("apiVersion", "")
    version = group_version.rsplit("/", 1)[-1]
    return f"{version[:1].upper()}{version[1:]}{document.get('kind', '')}"


def main(directory):
    root = pathlib.Path(directory)
    problems = []
    manifests = sorted(p for p in root.glob("*.yaml") if p.name != "kustomization.yaml")
    client = kubernetes.client.ApiClient()
    loaded = 0
    for manifest in manifests:
        for number, document in enumerate(yaml.safe_load_all(manifest.read_text())):
            if document is None:
                continue
            where = f"{manifest.name}#{number}"
            name = model_name(document)
            if not hasattr(kubernetes.client, name):
                problems.append(f"{where}: no client model for {document.get('apiVersion')} {document.get('kind')}")
                continue
            before = len(problems)
            check(document, name, f"{where}:{document.get('kind')}", problems)
            if len(problems) == before:
                try:
                    # The model's own validation: required fields and allowed values.
                    client.deserialize(json.dumps(document), name, "application/json")
                except (ValueError, TypeError) as error:
                    problems.append(f"{where}: {error}")
            loaded += 1
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    present = {manifest.name for manifest in manifests}
    problems += [f"kustomization.yaml lists {name}, which does not exist" for name in sorted(listed - present)]
    problems += [f"{name} is not in kustomization.yaml's resources" for name in sorted(present - listed)]
    for problem in problems:
        print(f"k8s_strict: {problem}")
    if problems:
        return 1
    print(f"k8s_strict: {loaded} objects in {len(manifests)} manifests load strictly; kustomization lists them all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes"))
