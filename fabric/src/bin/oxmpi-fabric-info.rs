//! `oxmpi-fabric-info` (also `oxrun --fabric-info`): which fabrics this machine offers (the
//! backends built in, /dev/shm, RDMA devices and ports, libfabric providers) and which
//! `OXMPI_FABRIC=auto` would use between hosts.

fn main() {
    print!("{}", oxmpi_fabric::wireup::fabric_report());
}
