"""relay/store"""
