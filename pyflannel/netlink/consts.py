"""Linux rtnetlink constants and struct layouts (from <linux/netlink.h>, <linux/rtnetlink.h>,
<linux/neighbour.h>, <linux/if_link.h>, <linux/if_addr.h>) used by pyflannel's hand-written
netlink code.

Kept in one place so the encoders, the parsers and the socket agree on the numbers and the
layouts. Both are part of the kernel ABI and never change.
"""

from __future__ import annotations

import struct

__all__: list[str] = []  # constants are imported by name by sibling modules only

# --- struct layouts (host byte order, as the kernel reads and writes them) --------------------
NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
RTATTR = struct.Struct("=HH")  # struct rtattr / struct nlattr header: len, type
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type
NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, ifindex, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, ifindex
U16 = struct.Struct("=H")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")

# --- netlink core -------------------------------------------------------------------------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# flags on an NLMSG_ERROR message
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# --- rtnetlink message types ------------------------------------------------------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

# multicast groups (bit masks for the socket address)
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400

# --- address families --------------------------------------------------------------------------
AF_UNSPEC = 0
AF_INET = 2
AF_BRIDGE = 7
AF_INET6 = 10

# --- routes (struct rtmsg) ---------------------------------------------------------------------
RT_TABLE_COMPAT = 252
RT_TABLE_MAIN = 254
RTPROT_UNSPEC = 0
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_RA = 9
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNSPEC = 0
RTN_UNICAST = 1
RTN_LOCAL = 2
RTNH_F_ONLINK = 0x4
RTM_F_CLONED = 0x200

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18

# --- neighbours (struct ndmsg) -----------------------------------------------------------------
NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

# --- links (struct ifinfomsg) ------------------------------------------------------------------
IFF_UP = 0x1
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFLA_VXLAN_ID = 1
IFLA_VXLAN_GROUP = 2
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_TTL = 5
IFLA_VXLAN_TOS = 6
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_L2MISS = 13
IFLA_VXLAN_L3MISS = 14
IFLA_VXLAN_PORT = 15
IFLA_VXLAN_GROUP6 = 16
IFLA_VXLAN_LOCAL6 = 17
IFLA_VXLAN_GBP = 23

# --- addresses (struct ifaddrmsg) --------------------------------------------------------------
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
