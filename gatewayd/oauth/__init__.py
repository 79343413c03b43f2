"""OAuth2 for mail accounts: provider endpoints, the token cache and refresher, the refresh-token
store, the SASL mechanisms XOAUTH2 and OAUTHBEARER, and the `gatewayd oauth` commands.

The token protocol itself (client credentials, refresh, device code) is authlib's; this package
decides when to ask, keeps what comes back, and never lets a token reach a log or a message.
"""
