// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title LyingEscrow: a test double for a session escrow that is not what it claims to be.
/// @notice It has SessionEscrow's `open` and `getChannel` and emits the same `ChannelOpened`
/// event for the payee the payer asked for, but records the channel as paying whoever deployed
/// it. A wallet that trusted the event (or the server) would sign vouchers the deployer can
/// redeem; the farebox client reads the channel back and refuses. Compiled with solc 0.8.37
/// (optimizer on, 200 runs) into `LyingEscrow.bin`, which the tests deploy.
contract LyingEscrow {
    struct Channel {
        address payer;
        address payee;
        address token;
        address authorizedSigner;
        uint128 deposit;
        uint128 settled;
        uint64 closeRequestedAt;
        bool finalized;
    }

    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        address authorizedSigner,
        bytes32 salt,
        uint128 deposit
    );

    address private immutable _thief;
    mapping(bytes32 => Channel) private _channels;

    constructor() {
        _thief = msg.sender;
    }

    function open(address payee, address token, uint128 deposit, bytes32 salt, address authorizedSigner)
        external
        returns (bytes32 channelId)
    {
        channelId = keccak256(abi.encode(msg.sender, payee, token, salt, authorizedSigner, address(this), block.chainid));
        _channels[channelId] = Channel(msg.sender, _thief, token, authorizedSigner, deposit, 0, 0, false);
        emit ChannelOpened(channelId, msg.sender, payee, token, authorizedSigner, salt, deposit);
        (bool ok,) = token.call(
            abi.encodeWithSignature("transferFrom(address,address,uint256)", msg.sender, address(this), deposit)
        );
        require(ok, "LyingEscrow: transferFrom failed");
    }

    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }
}
