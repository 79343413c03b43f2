"""The configuration file: one TOML file, validated with pydantic.

Every problem is reported as `file:key: what is wrong — how to fix`. The parts:
`schema` (the keys and their types), `load` (reading, validation, paths), `secrets` (passwords,
tokens, credentials) and `checks` (cross-references between tables).
"""

from gatewayd.config.checks import check_semantics, form_protection_problems
from gatewayd.config.load import config_from_dict, find_config_path, load_config
from gatewayd.config.schema import (
    DEFAULT_SEARCH_PATHS,
    EVENT_NAMES,
    MAX_ACCOUNTS,
    NAMED_RECIPIENTS,
    SOURCES,
    Account,
    Config,
    ConfigError,
    EventAction,
    EventFilter,
    EventRule,
    Form,
    FormField,
    Http,
    ImapSettings,
    Lmtp,
    Loopback,
    Outbound,
    Owner,
    Problem,
    Role,
    Routing,
    Scheduled,
    ScheduledFilter,
    SmtpSettings,
    Status,
    StatusGroup,
    TicketRef,
    TicketType,
    in_language,
    is_address,
)

__all__ = [
    "DEFAULT_SEARCH_PATHS", "EVENT_NAMES", "MAX_ACCOUNTS", "NAMED_RECIPIENTS", "SOURCES",
    "Account", "Config", "ConfigError", "EventAction", "EventFilter", "EventRule", "Form",
    "FormField", "Http", "ImapSettings", "Lmtp", "Loopback", "Outbound", "Owner", "Problem",
    "Role", "Routing", "Scheduled", "ScheduledFilter", "SmtpSettings", "Status", "StatusGroup",
    "TicketRef", "TicketType", "check_semantics", "config_from_dict", "find_config_path",
    "form_protection_problems", "in_language", "is_address", "load_config",
]
