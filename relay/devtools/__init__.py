"""relay/devtools"""
