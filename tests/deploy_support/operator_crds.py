"""Validates ServiceMonitor and PrometheusRule manifests against the
Prometheus Operator's CRD schemas (as the cloudcoil models carry them),
strictly: unknown fields are errors, as with kubectl --validate=strict.

usage: python operator_crds.py FILE.yaml...   (exit 1 on the first invalid one)
"""
import sys

import jsonschema
import yaml
from cloudcoil.models.prometheus_operator import v1


def strict(node):
    """additionalProperties: false wherever properties are listed."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node


SCHEMAS = {kind: strict(getattr(v1, kind).model_json_schema(by_alias=True)) for kind in ("ServiceMonitor", "PrometheusRule")}

failed = False
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        name = f"{path}: {doc['kind']}/{doc['metadata']['name']}"
        errors = list(jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]]).iter_errors(doc))
        for error in errors:
            print(f"{name}: {'.'.join(map(str, error.absolute_path))}: {error.message}")
        if not errors:
            print(f"{name} valid")
        failed |= bool(errors)
sys.exit(1 if failed else 0)
