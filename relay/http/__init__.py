"""relay/http"""
