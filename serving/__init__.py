"""Decision engine, actuators and HTTP API.

Online features -> forecast -> policy -> shield -> actuator (DESIGN.md section 3).
"""
