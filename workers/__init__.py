"""The arq worker of clip-relay: polling, clip fetching, deliveries and retries."""
