"""What users hold: the proxy (sync and asyncio) and the light state reader."""
