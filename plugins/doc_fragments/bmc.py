# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # BMC (IPMI over LAN) connection options; the spec is module_utils/common.py BMC_SPEC.
    DOCUMENTATION = r"""
options:
  bmc_host:
    description:
      - Address or name of the host's BMC (IPMI over LAN).
      - When not set in the task, the action plugin reads the inventory variable C(powernap_bmc_host).
    type: str
  bmc_port:
    description:
      - UDP port of the BMC (inventory variable C(powernap_bmc_port)).
    type: int
    default: 623
  bmc_user:
    description:
      - BMC user name (inventory variable C(powernap_bmc_user)).
      - Usually given once for a play through C(module_defaults) with C(group/powernap.fleet.power).
    type: str
  bmc_password:
    description:
      - BMC password (inventory variable C(powernap_bmc_password)). Never logged or returned.
    type: str
  bmc_kg:
    description:
      - IPMI 2.0 Kg (BMC key) when the BMC requires one (inventory variable C(powernap_bmc_kg)).
      - Never logged or returned.
    type: str
  bmc_privilege:
    description:
      - Privilege level to request at login (inventory variable C(powernap_bmc_privilege)).
      - When not set, administrator is requested and lowered to operator if the BMC refuses it.
      - Within one run, the first login to a BMC with given credentials sets the level for that BMC.
    type: str
    choices: [callback, user, operator, administrator]
  bmc_timeout:
    description:
      - Hard deadline in seconds for every single IPMI call, login included.
      - A BMC that does not answer within it fails the host with a connection error instead of hanging.
    type: float
    default: 15.0
notes:
  - IPMI needs the C(pyghmi) Python library where the IPMI request is made (the controller, or the relay host).
  - Cipher suites are negotiated by pyghmi (RMCP+ with SHA-256, falling back to SHA-1).
"""
