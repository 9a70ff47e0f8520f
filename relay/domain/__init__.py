"""relay/domain"""
