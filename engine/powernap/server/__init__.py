"""powerwaked: the fleet server of one L2 segment (registry, sleep proxy, UPS, schedules, clusters).

Modules: ``protocol`` (signed messages, replay protection, the engines'
reporter), ``registry`` (hosts and their state, kept on disk), ``wake``
(Wake-on-LAN and IPMI senders), ``proxy`` (ARP/NDP sleep proxy), ``ups``,
``schedule``, ``cluster`` (policies), ``api`` (HTTP JSON API), ``mdns``
(DNS-SD announce/browse), ``config`` (INI) and ``daemon`` (the main loop).
"""

DEFAULT_PORT = 7490  # UDP reports and the HTTP API share this number
SERVICE_TYPE = "_powerwaked._udp"
