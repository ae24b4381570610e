"""Local stack: provision the SAM template on a moto server."""
