"""Journeys: pure decisions over store-neutral events (see ``engine``), applied by ``runner``."""
