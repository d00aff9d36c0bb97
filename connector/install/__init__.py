"""Store install: Shopify (client credentials, OAuth authorization code, legacy token) and
WooCommerce (REST keys, wc-auth key provisioning), with the credentials they yield kept
encrypted (connector/secrets.py) and the webhooks the connector needs registered."""
