#!/usr/bin/env bash
# helexa.cortex.neurons as a playbook's inventory source, against the loopback fleet:
# the default groups from live data, refreshed after the fleet changes, and a play that
# targets a group. (tests/unit/plugins/inventory covers compose, keyed_groups, the cache and
# GPU groups with ansible-inventory.)
set -eux

config=../../integration_config.yml
ansible-playbook write_sources.yml -i "${INVENTORY_PATH}" -e "@${config}" \
  -e "sources_dir=${OUTPUT_DIR}" "$@"
ansible-playbook groups_from_endpoints.yml -i "${OUTPUT_DIR}/endpoints.neurons.yml" \
  -e "@${config}" "$@"
ansible-playbook groups_from_gateway.yml -i "${OUTPUT_DIR}/gateway.neurons.yml" \
  -e "@${config}" "$@"
