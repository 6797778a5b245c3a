//! ATA over Ethernet target (AoE r11). Under construction.
