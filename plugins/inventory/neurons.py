# Copyright: helexa.cortex maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: neurons
short_description: Neurons of a helexa.cortex fleet, from a gateway or a list of endpoints
version_added: 0.1.0
author:
  - helexa (@helexa)
description:
  - Builds an inventory of neuron agents from live data. The neurons are read from a
    gateway's C(/admin/nodes) (O(gateway_url)) or from a list of endpoints (O(neurons)).
  - Each neuron's C(/discovery) and C(/health) are queried (in parallel) for its devices,
    VRAM, loaded models, activation state, health and drain state.
  - A neuron that cannot be reached is still a host, in the group C(neuron_unhealthy), with
    the error in C(cortex_error); it never fails the inventory.
  - "Default groups: C(neurons) (every host), C(neuron_healthy), C(neuron_unhealthy),
    C(neuron_drained), C(model_<id>) for each loaded model and C(gpu_<name>) for each GPU
    model name (both sanitised: C(file:smollm2) becomes C(model_file_smollm2),
    C(NVIDIA H100 80GB HBM3) becomes C(gpu_nvidia_h100_80gb_hbm3))."
  - "Host variables: C(ansible_host) (from the URL), C(cortex_endpoint), C(cortex_healthy),
    C(cortex_reachable), C(cortex_drained), C(cortex_status), C(cortex_activation_state),
    C(cortex_activation), C(cortex_devices), C(cortex_gpu_count), C(cortex_vram_total_mb),
    C(cortex_vram_used_mb), C(cortex_vram_free_mb), C(cortex_models), C(cortex_model_ids),
    C(cortex_in_flight), C(cortex_hostname), C(cortex_version), C(cortex_harnesses), and
    when they apply C(cortex_error), C(cortex_cuda_unavailable_reason),
    C(cortex_gateway_node) and C(cortex_gateway_healthy)."
  - Values read from the agents and the gateway (including C(ansible_host) and host names)
    are marked unsafe, so they are never templated on the controller; a host name from them
    with characters other than letters, digits, C(.), C(_), C(-) and C(:) has those replaced
    by C(_).
  - "Where the neuron token goes: to the endpoints of O(neurons) (you listed them), and to an
    endpoint the gateway lists only when its host matches O(neuron_token_hosts). Other
    endpoints from the gateway are read without the token (their public C(/health) only) and
    a warning names them, so a gateway (or whoever can change its node list) cannot collect the
    token by listing an endpoint of its own. The token and the admin key are never sent across
    a redirect."
  - Options O(gateway_url), O(gateway_admin_key) and O(neuron_token) may be templates
    (for example a lookup of a vaulted or environment value).
  - The configuration file must be named C(neurons.yml), C(neurons.yaml), or end in
    C(.neurons.yml) / C(.neurons.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it makes the file a helexa.cortex.neurons source.
    required: true
    type: str
    choices: [helexa.cortex.neurons]
  gateway_url:
    description:
      - Base URL of a gateway, for example V(http://gateway1:31313). Its C(/admin/nodes)
        lists the neurons (names and endpoints) and their state as the gateway sees it.
      - One of O(gateway_url) and O(neurons) is required.
    type: str
    env:
      - name: HELEXA_CORTEX_GATEWAY_URL
  gateway_admin_key:
    description: An admin key of the gateway (sent as a bearer token to C(/admin/nodes)).
    type: str
    env:
      - name: HELEXA_CORTEX_GATEWAY_ADMIN_KEY
  neurons:
    description:
      - Neuron endpoints, each a URL string or a dictionary with C(url) and an optional
        C(name). Without a name, the host is named after the neuron's C(/discovery)
        hostname (with C(_<port>) added when two neurons share one), or after the URL's
        host when the neuron is unreachable.
      - Used when O(gateway_url) is not set.
    type: list
    elements: raw
    default: []
  neuron_token:
    description: The neurons' bearer token (every neuron route but C(/health) needs it).
    type: str
    env:
      - name: HELEXA_CORTEX_NEURON_TOKEN
  neuron_token_hosts:
    description:
      - Where O(neuron_token) may be sent when the neurons come from O(gateway_url). Each entry
        is a host name or address (V(gpu-a.example.net), V(10.20.0.11)), optionally with a port
        (V(10.20.0.11:13131), V([fd00::11]:13131)), a network in CIDR notation
        (V(10.20.0.0/24)), or a shell-style pattern (V(gpu-*.example.net)).
      - An endpoint the gateway lists whose host matches none is read without the token.
      - The endpoints of O(neurons) always get the token.
    type: list
    elements: str
    default: []
  query_neurons:
    description:
      - With O(gateway_url), also query each neuron directly. When false, only the
        gateway's view is used (for controllers that cannot reach the neurons).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for each HTTP request.
    type: float
    default: 5
  validate_certs:
    description: Verify TLS certificates of HTTPS endpoints.
    type: bool
    default: true
"""

EXAMPLES = r"""
---
# fleet.neurons.yml — every neuron the gateway knows
plugin: helexa.cortex.neurons
gateway_url: http://gateway1:31313
gateway_admin_key: "{{ lookup('ansible.builtin.env', 'CORTEX_ADMIN_KEY') }}"
neuron_token: "{{ lookup('ansible.builtin.env', 'CORTEX_NEURON_TOKEN') }}"
# the token goes only to neurons on the fleet's private network
neuron_token_hosts:
  - 10.20.0.0/24

---
# neurons.yml — a list of endpoints, no gateway; cached for ten minutes
plugin: helexa.cortex.neurons
neurons:
  - http://10.0.0.11:13131
  - name: big-box
    url: http://10.0.0.12:13131
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/helexa-neurons
cache_timeout: 600

---
# Groups and variables of your own from the discovered data
plugin: helexa.cortex.neurons
gateway_url: http://gateway1:31313
strict: false
compose:
  vram_free_gb: cortex_vram_free_mb // 1024
groups:
  idle: cortex_models | length == 0
  big: cortex_vram_total_mb > 40000
keyed_groups:
  - key: cortex_activation_state
    prefix: activation
  - key: cortex_gpu_count | string
    prefix: gpus
"""

import concurrent.futures
import fnmatch
import ipaddress
import re
from urllib.parse import urlsplit

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var
from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    ApiClient,
    CortexApiError,
)

_SUFFIXES = (".neurons.yml", ".neurons.yaml")
_NAMES = ("neurons.yml", "neurons.yaml")


def sanitise(value):
    """A group-name fragment: lower case, runs of anything but [a-z0-9] become one '_'."""
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_") or "unknown"


def safe_host_name(value):
    """A host name from agent or gateway data, without characters that mean something to
    Ansible or Jinja ('{', '%', ',', spaces, ...)."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", str(value)) or "unknown"


def _split_host_port(pattern):
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address -> (host, port or None)."""
    if pattern.startswith("["):
        host, rest = (pattern[1:].split("]", 1) + [""])[:2]
        return host, rest[1:] if rest.startswith(":") and rest[1:] else None
    if pattern.count(":") == 1:
        host, port = pattern.split(":")
        return host, port or None
    return pattern, None


def token_allowed(url, patterns):
    """Whether the neuron token may go to ``url``: its host (and port) matches one of
    ``patterns`` (host names, addresses, CIDR networks, shell-style patterns; see the docs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    try:
        port = str(parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:  # a port that is no number
        return False
    host = parts.hostname.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name: only plain DNS characters can match a pattern
        address = None
        if not re.match(r"^[a-z0-9.-]+$", host):
            return False
    for pattern in patterns or []:
        pattern = str(pattern).strip().lower()
        if address is not None and "/" in pattern:
            try:
                if address in ipaddress.ip_network(pattern, strict=False):
                    return True
            except ValueError:
                pass
            continue
        want_host, want_port = _split_host_port(pattern)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            try:
                if address == ipaddress.ip_address(want_host):
                    return True
                continue
            except ValueError:
                pass
        if fnmatch.fnmatchcase(host, want_host):
            return True
    return False


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "helexa.cortex.neurons"

    def verify_file(self, path):
        if not super().verify_file(path):
            return False
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        return name in _NAMES or name.endswith(_SUFFIXES)

    def _opt(self, name):
        """An option, templated when it is a template (e.g. a lookup of a secret)."""
        value = self.get_option(name)
        if isinstance(value, str) and self.templar.is_template(value):
            value = self.templar.template(value)
        return value

    # -- HTTP ------------------------------------------------------------------------------
    def _get(self, url, token=None):
        """GET a URL's JSON; any failure (HTTP, network, timeout) becomes an AnsibleError."""
        client = ApiClient(url, token=token, timeout=self.get_option("timeout"),
                           validate_certs=self.get_option("validate_certs"))
        try:
            return client.get("")
        except CortexApiError as exc:
            raise AnsibleError(exc.message) from exc
        except Exception as exc:  # e.g. a connection reset mid-body: the neuron is down
            raise AnsibleError("GET %s: %s" % (url, to_native(exc))) from exc

    # -- gathering -------------------------------------------------------------------------
    def _targets(self):
        """[(name or None, url, gateway node summary or None)] from the gateway or the list."""
        gateway = self._opt("gateway_url")
        if gateway:
            body = self._get(gateway.rstrip("/") + "/admin/nodes",
                             self._opt("gateway_admin_key"))
            nodes = (body or {}).get("nodes") if isinstance(body, dict) else None
            if not isinstance(nodes, list):
                raise AnsibleParserError("%s/admin/nodes did not return a node list"
                                         % gateway.rstrip("/"))
            return [(n.get("name"), str(n.get("endpoint", "")).rstrip("/"), n) for n in nodes]
        targets = []
        for entry in self.get_option("neurons") or []:
            if isinstance(entry, str):
                targets.append((None, entry.rstrip("/"), None))
            elif isinstance(entry, dict) and entry.get("url"):
                targets.append((entry.get("name"), str(entry["url"]).rstrip("/"), None))
            else:
                raise AnsibleParserError("each neurons entry is a URL or {name, url}; got %r"
                                         % (entry,))
        if not targets:
            raise AnsibleParserError("set gateway_url or a non-empty neurons list")
        return targets

    def _probe(self, target):
        name, url, node = target
        record = {"name": name, "url": url, "gateway": node, "health": None,
                  "discovery": None, "errors": []}
        if node is not None and not self.get_option("query_neurons"):
            return record
        if urlsplit(url).scheme not in ("http", "https"):
            record["errors"].append("not an http(s) endpoint: %s" % url)
            return record
        # The gateway's list is data, not the user's word: the token goes only where allowed.
        token = self._token
        paths = (("health", "/health"), ("discovery", "/discovery"))
        if token and node is not None and not token_allowed(url, self._token_hosts):
            token = None
            paths = paths[:1]  # /discovery needs the token; /health is public
            self._withheld.append(url)
        for key, path in paths:
            try:
                record[key] = self._get(url + path, token)
            except AnsibleError as exc:
                record["errors"].append(to_native(exc))
                if key == "health":  # unreachable: do not wait on a second timeout
                    break
        return record

    def _fetch(self):
        self._token = self._opt("neuron_token")
        self._token_hosts = self.get_option("neuron_token_hosts") or []
        self._withheld = []
        targets = self._targets()
        workers = max(1, min(16, len(targets)))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(self._probe, targets))
        if self._withheld:
            self.display.warning(
                "helexa.cortex.neurons: the neuron token was not sent to %s (listed by the "
                "gateway, not matched by neuron_token_hosts); only their /health was read. Add "
                "their hosts or network to neuron_token_hosts to read /discovery too."
                % ", ".join(sorted(self._withheld)))
        return records

    # -- building --------------------------------------------------------------------------
    @staticmethod
    def _host_vars(record):
        health = record.get("health") if isinstance(record.get("health"), dict) else {}
        disc = record.get("discovery") if isinstance(record.get("discovery"), dict) else {}
        node = record.get("gateway") if isinstance(record.get("gateway"), dict) else {}
        reached = bool(health)
        if reached:
            healthy = health.get("status") == "ok"
            if node:
                healthy = healthy and bool(node.get("healthy", True))
            drained = bool(health.get("drained", False))
            activation = health.get("activation") or {}
            activation_state = activation.get("state") if isinstance(activation, dict) else None
            devices = health.get("devices") or []
            models = health.get("models") or []
        else:  # the gateway's last view, or nothing
            healthy = bool(node.get("healthy", False)) and not record.get("errors")
            drained = bool(node.get("drained", False))
            activation_state = node.get("activation")
            activation = {"state": activation_state} if activation_state else {}
            devices = node.get("devices") or []
            # The gateway lists available models too; only loaded ones count, and a neuron
            # we tried and could not reach has none we can rely on.
            models = [] if record.get("errors") else [
                m for m in node.get("models") or []
                if isinstance(m, dict) and m.get("status", "loaded") == "loaded"]
        # /discovery has the static device fields (uuid, compute capability); merge them in.
        static = {d.get("index"): d for d in disc.get("devices") or [] if isinstance(d, dict)}
        devices = [dict(static.get(d.get("index"), {}), **d) for d in devices
                   if isinstance(d, dict)] or list(static.values())
        gpus = [d for d in devices if d.get("kind", "cuda") != "cpu"]
        url = record["url"]
        hv = {
            "cortex_endpoint": url,
            "cortex_healthy": healthy,
            "cortex_reachable": reached,
            "cortex_drained": drained,
            "cortex_status": health.get("status") if reached else "unreachable",
            "cortex_activation_state": activation_state,
            "cortex_activation": activation,
            "cortex_devices": devices,
            "cortex_gpu_count": disc.get("gpu_count", len(gpus)),
            "cortex_vram_total_mb": sum(int(d.get("vram_total_mb") or 0) for d in devices),
            "cortex_vram_used_mb": sum(int(d.get("vram_used_mb") or 0) for d in devices),
            "cortex_vram_free_mb": sum(int(d.get("vram_free_mb") or 0) for d in devices),
            "cortex_models": models,
            "cortex_model_ids": [m.get("id") for m in models if isinstance(m, dict)],
            "cortex_in_flight": sum(int(m.get("in_flight") or 0) + int(m.get("queue_depth") or 0)
                                    for m in models if isinstance(m, dict)),
            "cortex_hostname": disc.get("hostname"),
            "cortex_version": disc.get("version"),
            "cortex_harnesses": disc.get("harnesses"),
        }
        if disc.get("cuda_unavailable_reason"):
            hv["cortex_cuda_unavailable_reason"] = disc["cuda_unavailable_reason"]
        if node:
            hv["cortex_gateway_node"] = record.get("name")
            hv["cortex_gateway_healthy"] = bool(node.get("healthy", False))
        if record.get("errors"):
            hv["cortex_error"] = "; ".join(record["errors"])
        return hv, gpus

    def _host_name(self, record, taken):
        url = urlsplit(record["url"])
        disc = record.get("discovery") if isinstance(record.get("discovery"), dict) else {}
        name = record.get("name") or disc.get("hostname") or url.hostname or record["url"]
        name = safe_host_name(name)
        if name in taken and not record.get("name"):
            name = "%s_%s" % (name, url.port or url.scheme)
        return name

    def _populate(self, records):
        strict = self.get_option("strict")
        for group in ("neurons", "neuron_healthy", "neuron_unhealthy", "neuron_drained"):
            self.inventory.add_group(group)
        taken = set()
        for record in records:
            name = self._host_name(record, taken)
            taken.add(name)
            hostvars, gpus = self._host_vars(record)
            self.inventory.add_host(name, group="neurons")
            host = urlsplit(record["url"]).hostname
            if host:  # from the gateway's data or the URL: never templated
                self.inventory.set_variable(name, "ansible_host", wrap_var(host))
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, wrap_var(value))
            self.inventory.add_child(
                "neuron_healthy" if hostvars["cortex_healthy"] else "neuron_unhealthy", name)
            if hostvars["cortex_drained"]:
                self.inventory.add_child("neuron_drained", name)
            for model_id in hostvars["cortex_model_ids"]:
                if model_id:
                    group = self.inventory.add_group("model_" + sanitise(model_id))
                    self.inventory.add_child(group, name)
            for device in gpus:
                group = self.inventory.add_group("gpu_" + sanitise(device.get("name")))
                self.inventory.add_child(group, name)
            all_vars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), all_vars, name, strict=strict)
            all_vars = self.inventory.get_host(name).get_vars()
            self._add_host_to_composed_groups(self.get_option("groups"), all_vars, name,
                                              strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), all_vars, name,
                                           strict=strict)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        records = None
        if use_cache:
            try:
                records = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if records is None:
            records = self._fetch()
        if update_cache:
            self._cache[cache_key] = records
        self._populate(records)
