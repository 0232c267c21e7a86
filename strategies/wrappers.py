"""Strategy wrappers usable from a scenario: Flower's differential-privacy wrappers.

``[strategy.wrapper] name = "dp_server_fixed"`` (or ``dp_server_adaptive``,
``dp_client_fixed``, ``dp_client_adaptive``) wraps the configured strategy in the
matching ``flwr.serverapp.strategy.DifferentialPrivacy*`` class; the other keys are its
arguments (checked like a strategy's). The client-side variants need the matching
client mod; fedsim's ClientApp then runs with ``fixedclipping_mod`` /
``adaptiveclipping_mod`` (see `fedsim.clients.app`).
"""

from __future__ import annotations

from flwr.serverapp import strategy as flwr_strategy

from fedsim.core.registry import Registry

WRAPPERS: Registry[type] = Registry("strategy wrapper")
WRAPPERS.add("dp_server_fixed", flwr_strategy.DifferentialPrivacyServerSideFixedClipping)
WRAPPERS.add("dp_client_fixed", flwr_strategy.DifferentialPrivacyClientSideFixedClipping)
WRAPPERS.add("dp_server_adaptive", flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping)
WRAPPERS.add("dp_client_adaptive", flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping)

#: The client mod each client-side wrapper needs ("" = none).
CLIENT_MODS = {"dp_client_fixed": "fixedclipping", "dp_client_adaptive": "adaptiveclipping"}
