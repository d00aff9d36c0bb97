"""Which WordPress site sent a delivery, and whether it is the store's own.

A copy of the shop (a host's staging site, a clone for tests) carries the live shop's webhooks and
Cart Abandonment Recovery settings with their secrets, so what it sends is correctly signed (or
carries the right token); only the site it names tells it apart:

- ``X-WC-Webhook-Source`` on an order webhook: WooCommerce's ``home_url('/')``;
- ``User-Agent: WordPress/6.8; <home_url>`` on anything WordPress posts (``wp_remote_post``);
- the cart plugin's ``checkout_url``: a page of the sending site.

An address is compared by host and path (scheme, ``www.``, a default port and a trailing slash
aside). The host goes through UTS-46 (the ``idna`` package, IDNA 2008 as browsers and pydantic's
URL type write it: ``faß.de`` is ``xn--fa-hia.de``), the same function on both sides; Python's own
``"idna"`` codec is IDNA 2003 (``faß.de`` -> ``fass.de``, another domain). A language directory
(WPML's ``https://bloom.example/en/``) cannot be told from a staging subfolder
(``https://bloom.example/staging/``), so a path other than ``site_url``'s is another site unless
the store lists it in ``webhook_sources``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import idna

from connector.config import WooCommerceStore

Site = tuple[str, str]  # (host[:port], path without a trailing slash)
_WORDPRESS_AGENT = re.compile(r"WordPress/[^;]*;\s*(\S+)\s*$")


def header_text(value: str) -> str:
    """A header as WordPress wrote it: the server reads header bytes as latin-1, WordPress sends UTF-8
    (``home_url`` of a shop on ``bücher.example``). Text that is not UTF-8 stays as read."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _host(host: str) -> str | None:
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        # not a domain name IDNA takes (an IPv6 literal, an underscore in an intranet name): as written
        return host.lower() if host.isascii() else None


def site_of(url: str) -> Site | None:
    """A site address as WordPress may write it for one shop: host (UTS-46, lower case, no ``www.``,
    no default port) and path (no trailing slash); the scheme left out (a proxy may serve https
    while ``home_url`` says http). None when it is no address."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = _host(parts.hostname or "") if parts.hostname else None
    if not host:
        return None
    host = host.removeprefix("www.")
    if port not in (None, 80, 443):
        host = f"{host}:{port}"
    return host, parts.path.rstrip("/")


def own_sites(store: WooCommerceStore) -> list[Site]:
    """``site_url`` and the addresses the operator added in ``webhook_sources``."""
    sites = [site_of(str(url)) for url in (store.site_url, *store.webhook_sources)]
    return [s for s in sites if s is not None]


def is_own_site(store: WooCommerceStore, url: str) -> bool:
    """``url`` is the home address of the store's site (or of one it lists)."""
    return site_of(url) in own_sites(store)


def is_own_page(store: WooCommerceStore, url: str) -> bool:
    """``url`` is a page of the store's site: its host, under its path. A page's path cannot say where the
    home address ends, so a subfolder copy on the same host passes here; the User-Agent names it."""
    site = site_of(url)
    if site is None:
        return False
    host, path = site
    homes = own_sites(store)
    if store.checkout_url is not None and (checkout := site_of(str(store.checkout_url))) is not None:
        homes.append((checkout[0], ""))  # a checkout on a domain of its own: any page there
    return any(host == h and (path == p or path.startswith(p + "/")) for h, p in homes)


def user_agent_home(headers: Mapping[str, str]) -> str | None:
    """The ``home_url()`` WordPress names in its User-Agent, None when the agent is not WordPress's."""
    match = _WORDPRESS_AGENT.fullmatch(header_text(headers.get("user-agent", "")).strip())
    return match.group(1) if match else None


def shown(url: str) -> str:
    """A sending site's address for a log line or the dashboard: bounded, on one line."""
    return " ".join(url.split())[:200]


def origin(url: str) -> str:
    """``scheme://host`` of a page, for a log line: a cart's recovery link carries the customer's cart token."""
    parts = urlsplit(url.strip())
    return shown(f"{parts.scheme}://{parts.netloc}")


__all__ = ["Site", "header_text", "is_own_page", "is_own_site", "origin", "own_sites", "shown", "site_of", "user_agent_home"]
