//! OVA: a ustar archive holding the OVF descriptor first, then the streamOptimized VMDK,
//! then the manifest (`SHA256(file)= hex` lines), as vSphere and ovftool expect. Headers
//! are deterministic (mtime `SOURCE_DATE_EPOCH`, owner 0:0, mode 0644).
//!
//! [`ovf`] is the one place the OVF descriptor is made. It declares the OVF properties that
//! init reads back from the OVF environment (packages/init/src/ovfenv.rs): `hostname`,
//! `instance-id`, `ssh-key`, `ip`, `netmask`, `gateway`, `dns`, `user-data` (base64
//! #cloud-config), all `ovf:userConfigurable="true"` with empty defaults, and asks for the
//! ISO transport (`ovf:transport="iso"` on the VirtualHardwareSection): at power-on vSphere
//! attaches `ovf-env.xml` on an ISO to the VM's CD-ROM, which is why the hardware has an IDE
//! controller with a CD-ROM drive (ATA_PIIX and BLK_DEV_SR are in the kernel).
//! The `com.vmware.guestInfo` transport is not declared: reading it needs VMware Tools' RPC.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::profile::{DiskController, Firmware, Nic, Profile};

/// What the OVF says about the image.
pub struct OvfInput<'a> {
    pub profile: &'a Profile,
    /// The workspace version.
    pub version: &'a str,
    /// File name of the VMDK inside the OVA.
    pub vmdk_name: &'a str,
    /// Size of the VMDK file in bytes.
    pub vmdk_size: u64,
    /// Virtual size of the disk in bytes.
    pub capacity: u64,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OVF 1.0 descriptor (the envelope vSphere 6.7+ imports).
pub fn ovf(i: &OvfInput) -> String {
    let p = &i.profile.spec;
    let hw = &p.hardware;
    let name = format!("axion-{}", p.profile.name);
    // other5xLinux64Guest exists from hardware version 17 (vSphere 7.0) on.
    let os_type = if hw.vmware_hardware_version >= 17 {
        "other5xLinux64Guest"
    } else {
        "other4xLinux64Guest"
    };
    let (ctrl_sub, ctrl_desc) = match hw.disk_controller {
        DiskController::Pvscsi => ("VirtualSCSI", "SCSI Controller"),
        DiskController::Sata => ("vmware.sata.ahci", "SATA Controller"),
        // vSphere has no virtio; the closest it imports is PVSCSI.
        DiskController::Virtio => ("VirtualSCSI", "SCSI Controller"),
    };
    let ctrl_type = if matches!(hw.disk_controller, DiskController::Sata) {
        20
    } else {
        6
    };
    let nic = match hw.nic {
        Nic::Vmxnet3 | Nic::Virtio => "VmxNet3",
        Nic::E1000 => "E1000",
    };
    let firmware = match hw.firmware {
        Firmware::Efi => "efi",
        Firmware::Bios => "bios",
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{vmdk}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="100" vmw:osType="{os_type}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="iso">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{hwv:02}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>{ctrl_desc}</rasd:Description>
        <rasd:ElementName>{ctrl_desc} 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>{ctrl_sub}</rasd:ResourceSubType>
        <rasd:ResourceType>{ctrl_type}</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>{nic} ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Ethernet 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>{nic}</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>Video card</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>24</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>VirtualIDEController 0</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Description>CD-ROM for the OVF environment (ISO transport)</rasd:Description>
        <rasd:ElementName>CD-ROM 1</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:Parent>7</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="false"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.powerOffType" vmw:value="soft"/>
      <vmw:Config ovf:required="false" vmw:key="powerOpInfo.resetType" vmw:value="soft"/>
    </VirtualHardwareSection>
    <ProductSection ovf:required="false">
      <Info>Information about the installed software, and the first-boot settings</Info>
      <Product>axion</Product>
      <Vendor>axion</Vendor>
      <Version>{version}</Version>
      <FullVersion>{version} ({profile})</FullVersion>
      <ProductUrl>{url}</ProductUrl>
      <VendorUrl>{url}</VendorUrl>
{properties}    </ProductSection>
    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>{desc}</Annotation>
    </AnnotationSection>
  </VirtualSystem>
</Envelope>
"#,
        vmdk = xml_escape(i.vmdk_name),
        vmdk_size = i.vmdk_size,
        capacity = i.capacity,
        name = xml_escape(&name),
        hwv = hw.vmware_hardware_version,
        cpus = hw.cpus,
        mem = hw.memory_mib,
        version = xml_escape(i.version),
        profile = xml_escape(&p.profile.name),
        url = "https://github.com/axion-os/axion",
        desc = xml_escape(&p.profile.description),
        properties = properties(),
    );
    s
}

/// (category, key, label, description) of each OVF property; init's `ovfenv` reads them.
pub const PROPERTIES: &[(&str, &str, &str, &str)] = &[
    (
        "System",
        "hostname",
        "Hostname",
        "Host name of this VM (letters, digits, hyphens; dots \
         between labels). Empty: the image's default.",
    ),
    (
        "System",
        "instance-id",
        "Instance ID",
        "Identifies this VM: a new value gives it a new \
         machine-id, SSH host keys, engine TLS certificates \
         and RNG seed. Empty: vCenter's VM id.",
    ),
    (
        "System",
        "ssh-key",
        "SSH public key",
        "Public key(s) allowed to log in as root over SSH, \
         e.g. ssh-ed25519 AAAA... me@host.",
    ),
    (
        "Network",
        "ip",
        "IPv4 address",
        "Static address (ADDR or ADDR/PREFIX) of the first NIC. \
         Empty or dhcp: DHCP.",
    ),
    (
        "Network",
        "netmask",
        "Netmask",
        "Netmask (255.255.255.0) or prefix length (24) for a static \
         address.",
    ),
    (
        "Network",
        "gateway",
        "Gateway",
        "Default gateway for a static address.",
    ),
    (
        "Network",
        "dns",
        "DNS servers",
        "Name servers, separated by commas.",
    ),
    (
        "Advanced",
        "user-data",
        "cloud-init user-data (base64)",
        "A #cloud-config document, base64 \
         encoded: hostname, ssh_authorized_keys, write_files, runcmd, ntp.",
    ),
];

fn properties() -> String {
    let mut s = String::new();
    let mut category = "";
    for (cat, key, label, desc) in PROPERTIES {
        if *cat != category {
            let _ = writeln!(s, "      <Category>{}</Category>", xml_escape(cat));
            category = cat;
        }
        let _ = writeln!(
            s,
            "      <Property ovf:key=\"{}\" ovf:type=\"string\" ovf:userConfigurable=\"true\" \
             ovf:value=\"\">\n        <Label>{}</Label>\n        \
             <Description>{}</Description>\n      </Property>",
            xml_escape(key),
            xml_escape(label),
            xml_escape(desc)
        );
    }
    s
}

fn header(name: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

fn sha256_hex(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Writes the OVA: `NAME.ovf`, the VMDK (read from `vmdk`), `NAME.mf`.
pub fn write(
    out: impl Write,
    base: &str,
    ovf_text: &str,
    vmdk_name: &str,
    vmdk: &std::path::Path,
    mtime: u64,
) -> io::Result<()> {
    let ovf_name = format!("{base}.ovf");
    let mf_name = format!("{base}.mf");
    let vmdk_len = std::fs::metadata(vmdk)?.len();
    let mut b = tar::Builder::new(out);
    b.append(
        &header(&ovf_name, ovf_text.len() as u64, mtime)?,
        ovf_text.as_bytes(),
    )?;
    b.append(
        &header(vmdk_name, vmdk_len, mtime)?,
        std::fs::File::open(vmdk)?,
    )?;
    let mf = format!(
        "SHA256({ovf_name})= {}\nSHA256({vmdk_name})= {}\n",
        sha256_hex(ovf_text.as_bytes())?,
        sha256_hex(std::fs::File::open(vmdk)?)?
    );
    b.append(&header(&mf_name, mf.len() as u64, mtime)?, mf.as_bytes())?;
    b.into_inner()?.flush()
}
