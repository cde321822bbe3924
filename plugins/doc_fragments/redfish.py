# Copyright: (c) 2026, powernap.fleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # Redfish connection options; credentials are the bmc fragment's bmc_user/bmc_password.
    DOCUMENTATION = r"""
options:
  redfish_host:
    description:
      - Base URL of the host's Redfish service, V(https://bmc1.example.net:8443), or a bare name or address
        (then V(https://NAME) on port 443). V(http://) is accepted for labs.
      - When not set, O(bmc_host) is used (the same BMC usually speaks both IPMI and Redfish); a O(bmc_host)
        given as an V(http://) or V(https://) URL means Redfish where the protocol is chosen automatically.
      - Inventory variable C(powernap_redfish_host).
      - The user name and password are O(bmc_user) and O(bmc_password).
    type: str
  redfish_system_id:
    description:
      - Id (V(1), V(System.Embedded.1)) or full path (V(/redfish/v1/Systems/1)) of the ComputerSystem to control.
      - When not set, the service must list exactly one system, which is used.
      - Inventory variable C(powernap_redfish_system_id).
    type: str
  redfish_validate_certs:
    description:
      - Verify the Redfish service's TLS certificate. Turn this off only for labs and emulators.
      - Inventory variable C(powernap_redfish_validate_certs).
    type: bool
    default: true
  redfish_ca_path:
    description:
      - CA bundle file or directory to verify the Redfish service's certificate with (BMCs often carry a
        certificate from a private CA). The system's trust store is used when not set.
      - Inventory variable C(powernap_redfish_ca_path).
    type: path
notes:
  - Redfish needs the C(sushy) Python library (OpenStack's Redfish client) where the request is made (the controller,
    or the relay host).
  - Redfish logs in with a session (C(SessionService)) and falls back to HTTP basic authentication when the service
    offers no sessions; the session is closed at the end of the task.
  - The ResetType is chosen from the values the system allows - V(On) (or V(ForceOn)), V(GracefulShutdown) for a soft
    and V(ForceOff) for a hard power-off, or V(PushPowerButton) where that is all the system offers.
  - O(bmc_timeout) bounds every single Redfish call, login included.
"""
