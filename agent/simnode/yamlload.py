"""YAML as simulated-node specs read it: PyYAML's safe loader, minus two YAML 1.1 traps.

A plain `0000:07:00.0` would load as a base-60 float, so PCI addresses stay strings; and a
key written twice in one mapping is an error instead of the last one silently winning.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any

import yaml

from agent.simnode.errors import SimulationError

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PCI_ADDRESS = re.compile(r"^(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_HEX_DIGITS = "0123456789abcdefABCDEF"


class _SpecLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise SimulationError(f"line {line}: key {key!r} given twice in one mapping")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PCI addresses resolve to strings before YAML 1.1's int/float rules get to see them.
_SpecLoader.yaml_implicit_resolvers = {
    first: ([(_STR_TAG, _PCI_ADDRESS)] if first in _HEX_DIGITS else []) + list(rules)
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse one YAML document; SimulationError (one line, with the position) when it is not."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SimulationError(f"not valid YAML: {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise SimulationError(f"not valid YAML: {' '.join(str(err).split())}") from None
