"""`fedseg experiments|sites|researchers`: config, experiment files, the typed REST client and live views."""
